// Builds the package (dist/: ES module and its types, with tsc) and, from the
// same output, the gateway's served client static/pushgate.js (one source:
// src/index.ts). `--check` builds into a temporary directory and fails when
// the committed static/pushgate.js differs from a fresh build.
import { execFileSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

const HERE = resolve(dirname(fileURLToPath(import.meta.url)), '..');
const STATIC = resolve(HERE, '..', '..', 'static', 'pushgate.js');
const BANNER = '// Built from clients/js/src/index.ts by clients/js/scripts/build.mjs: do not edit here.\n';
const check = process.argv.includes('--check');
const tsc = join(HERE, 'node_modules', 'typescript', 'bin', 'tsc');

const outDir = check ? mkdtempSync(join(tmpdir(), 'pushgate-js-')) : join(HERE, 'dist');
try {
  execFileSync(process.execPath, [tsc, '-p', join(HERE, 'tsconfig.json'), '--outDir', outDir], { stdio: 'inherit' });
  const built = BANNER + readFileSync(join(outDir, 'index.js'), 'utf8');
  if (check) {
    const committed = readFileSync(STATIC, 'utf8');
    if (committed !== built) {
      console.error('static/pushgate.js is not a fresh build of clients/js/src/index.ts: run `npm run build` in clients/js and commit it');
      process.exit(1);
    }
    console.log('static/pushgate.js equals a fresh build');
  } else {
    writeFileSync(STATIC, built);
    console.log(`built ${outDir} and ${STATIC}`);
  }
} finally {
  if (check) rmSync(outDir, { recursive: true, force: true });
}
