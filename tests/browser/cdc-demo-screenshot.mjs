// Screenshots of static/orders.html against a running scripts/cdc-demo, for docs/images/.
// Not a test file (run.sh runs *.test.mjs only): it needs the whole CDC pipeline running.
//
//   node tests/browser/cdc-demo-screenshot.mjs http://127.0.0.1:8080 PGPORT OUTDIR
//
// Drives real changes with psql (the demo's database) and checks that the page follows
// them before each screenshot: all orders, then only `paid` ones (filtered by the gateway).
import { execFileSync } from 'node:child_process';
import { join } from 'node:path';
import { chromium } from 'playwright-core';

const [base, pgPort, out] = process.argv.slice(2);
const CHROMIUM = process.env.CHROMIUM || '/usr/bin/chromium';
const sql = (q) => execFileSync('psql', ['-X', '-q', '-h', '127.0.0.1', '-p', pgPort, '-U', 'postgres', '-v', 'ON_ERROR_STOP=1', '-c', q]);
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

const browser = await chromium.launch({ executablePath: CHROMIUM, args: ['--no-sandbox'] });
try {
  const page = await browser.newPage({ viewport: { width: 1280, height: 720 }, colorScheme: 'light' });
  const rows = () => page.locator('[data-testid="order-rows"] tr').count();
  const waitRows = async (n) => {
    for (let i = 0; i < 100 && (await rows()) !== n; i++) await sleep(100);
    if ((await rows()) !== n) throw new Error(`expected ${n} rows, have ${await rows()}`);
  };
  const status = (id) => page.locator(`tr[data-key="${id}"]`).getAttribute('data-status');

  await page.goto(`${base}/orders.html`);
  await page.waitForSelector('[data-testid="conn-state"][data-state="live"]');
  await waitRows(8);
  sql("UPDATE orders SET status = 'shipped', updated_at = now() WHERE id = 3");
  await sleep(600);
  sql("INSERT INTO orders (customer, item, total) VALUES ('Linus Torvalds', 'Mechanical keyboard', 99.00)");
  await sleep(600);
  sql("DELETE FROM orders WHERE id = 8");
  await waitRows(8);
  sql("UPDATE orders SET status = 'paid', updated_at = now() WHERE id = 1");
  for (let i = 0; i < 50 && (await status(1)) !== 'paid'; i++) await sleep(100);
  if ((await status(3)) !== 'shipped' || (await status(1)) !== 'paid') throw new Error('the page did not follow');
  await sleep(300);
  await page.screenshot({ path: join(out, 'cdc-demo.png') });

  // Only paid orders: the gateway filters; orders enter and leave as their status changes.
  await page.click('[data-testid="filter-paid"]');
  await waitRows(2); // 1 and 2 are paid now
  sql("UPDATE orders SET status = 'paid', updated_at = now() WHERE id = 5");
  await waitRows(3);
  sql("UPDATE orders SET status = 'shipped', updated_at = now() WHERE id = 2");
  // Caught mid-leave: the row fades out before it goes.
  await page.waitForSelector('[data-testid="activity"] .op.leave', { timeout: 10000 });
  await page.screenshot({ path: join(out, 'cdc-demo-paid.png') });
  await waitRows(2);
  console.log('screenshots written to', out);
} finally {
  await browser.close();
}
