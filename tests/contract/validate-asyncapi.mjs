// Parses api/asyncapi.yaml with the AsyncAPI parser (which resolves the
// $refs into api/schemas/messages.json and runs its Spectral rules) and fails
// on any error or warning. Usage: node validate-asyncapi.mjs [file]
import { Parser, fromFile } from '@asyncapi/parser';
import { fileURLToPath } from 'node:url';
import path from 'node:path';

const here = path.dirname(fileURLToPath(import.meta.url));
const file = process.argv[2] ?? path.join(here, '../../api/asyncapi.yaml');
const severities = ['error', 'warning', 'info', 'hint'];
const { document, diagnostics } = await fromFile(new Parser(), file).parse();
for (const d of diagnostics) {
  console.log(`${severities[d.severity]}: ${d.code}: ${d.message} at ${d.path.join('.')}`);
}
const bad = diagnostics.filter((d) => d.severity <= 1);
if (!document || bad.length > 0) {
  console.error(`asyncapi: ${file} has ${bad.length} error(s)/warning(s)`);
  process.exit(1);
}
const messages = document.allMessages().length;
const operations = document.operations().length;
console.log(`asyncapi: ${path.relative(process.cwd(), file)} is valid AsyncAPI ${document.version()}: ${document.channels().length} channels, ${operations} operations, ${messages} messages`);
