// Drives Debian's chromium (headless, through playwright-core) against a worker's dashboard the
// way an operator would: reads the overview, filters dead letters, opens one and reads its body,
// retries it, runs a bulk retry with a dry run first and watches its progress, looks at a
// hostile dead letter, and tries a cross-site form post. The C++ test that starts it (the
// [browser] case of tests/integration/dashboard_test.cpp) seeds the data and checks the
// database after.
//
//   node dashboard.mjs --base http://127.0.0.1:PORT --artifacts DIR --hostile ID --expect-dead N
//
// Prints one line "result: {json}" with what it saw; exits 1 when a step failed (the line says
// which). Every request that is not for the worker is aborted and reported: the pages must work
// offline, with no CDN.
import http from 'node:http';
import fs from 'node:fs';
import path from 'node:path';
import { chromium } from 'playwright-core';

const args = Object.fromEntries(
  process.argv.slice(2).reduce((pairs, a, i, all) => (a.startsWith('--') ? [...pairs, [a.slice(2), all[i + 1]]] : pairs), []));
const base = args.base;
const artifacts = args.artifacts;
const origin = new URL(base).origin;
fs.mkdirSync(artifacts, { recursive: true });

const result = { steps: [], foreign_requests: [], dialogs: 0, page_errors: [] };
const step = (name, data = {}) => result.steps.push({ name, ...data });

const browser = await chromium.launch({
  executablePath: '/usr/bin/chromium',
  chromiumSandbox: false,  // as root in a container: the sandbox cannot start
  args: ['--no-sandbox', '--disable-gpu', '--disable-dev-shm-usage', '--disable-quic', '--no-first-run',
    '--disable-background-networking', '--disable-component-update', '--disable-sync',
    // chromium's own traffic (updates, time, accounts) never reaches a resolver: nothing leaves loopback
    '--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1'],
});
let failed = null;
let csrfServer = null;
try {
  const context = await browser.newContext({ viewport: { width: 1280, height: 800 } });
  await context.route('**', (route) => {
    const url = route.request().url();
    if (url.startsWith(origin + '/') || url.startsWith('http://127.0.0.1:' + (csrfServer?.address()?.port ?? 0) + '/')) {
      return route.continue();
    }
    result.foreign_requests.push(url);
    return route.abort();
  });
  const page = await context.newPage();
  page.on('dialog', (d) => { result.dialogs++; d.dismiss().catch(() => {}); });
  page.on('pageerror', (e) => result.page_errors.push(String(e)));
  page.on('console', (m) => { if (m.type() === 'error') result.page_errors.push(m.text()); });
  const shot = (name) => page.screenshot({ path: path.join(artifacts, name + '.png'), fullPage: false });

  // 1. The overview: the dead letters card and every listener's row.
  await page.goto(base + '/');
  const dead = await page.locator('.card', { hasText: 'dead letters' }).locator('.value').textContent();
  const listeners = await page.locator('tr[data-listener]').evaluateAll((rows) => rows.map((r) => r.dataset.listener));
  step('overview', { dead_letters: dead, listeners });
  await shot('overview');

  // 2. Filter: loyalty's dead letters whose error mentions "timed out".
  await page.click('nav >> text=Dead letters');
  await page.fill('input[name=listener]', 'loyalty');
  await page.fill('input[name=error]', 'timed out');
  await Promise.all([page.waitForURL(/listener=loyalty/), page.click('form.filters button[type=submit]')]);
  const rows = await page.locator('#dead-letters tbody tr').evaluateAll((trs) =>
    trs.map((tr) => Array.from(tr.cells).map((c) => c.textContent)));
  step('filter', { rows: rows.length, listeners: [...new Set(rows.map((r) => r[1]))], errors: [...new Set(rows.map((r) => r[3]))] });
  await shot('dead-letters');

  // 3. Open the newest and read its body, decoded from msgpack.
  await Promise.all([page.waitForURL(/\/dead-letters\/\d+$/), page.locator('#dead-letters tbody tr a').first().click()]);
  const opened = Number(new URL(page.url()).pathname.split('/').pop());
  const body = JSON.parse(await page.locator('#body').textContent());
  step('open', { id: opened, body });
  await shot('dead-letter');

  // 4. Retry it: the page goes to its redrive, which the worker runs; app.js refreshes it.
  await Promise.all([page.waitForURL(/\/redrives\/\d+$/), page.click('form[action$="/retry"] button')]);
  const single = Number(new URL(page.url()).pathname.split('/').pop());
  await page.waitForSelector('#redrive-state[data-state=done]', { timeout: 30000 });
  step('retry_one', { dead_letter: opened, redrive: single, state: await page.locator('#redrive-state').textContent() });

  // 5. Bulk retry every customer_stats dead letter at 200/s: the dry run first, then progress.
  await page.goto(base + '/dead-letters?listener=customer_stats');
  await Promise.all([page.waitForURL(/\/dead-letters\/bulk/), page.click('text=retry all matching…')]);
  const dry = await page.locator('#dry-run').textContent();
  await page.fill('input[name=rate]', '200');
  await shot('dry-run');
  const clicked = Date.now();
  await Promise.all([page.waitForURL(/\/redrives\/\d+$/), page.click('#confirm')]);
  const bulk = Number(new URL(page.url()).pathname.split('/').pop());
  const seen = new Set();
  for (;;) {  // progress as the page shows it, refreshed in place by app.js
    const text = await page.locator('#redrive-state').textContent();
    seen.add(await page.locator('progress').getAttribute('value'));
    if ((await page.locator('#redrive-state').getAttribute('data-state')) === 'done') break;
    if (Date.now() - clicked > 60000) throw new Error('bulk retry not done after 60 s: ' + text);
    if (seen.size === 3) await shot('redrive');
    await page.waitForTimeout(200);  // the page refreshes itself each second; this only samples it
  }
  step('bulk', { dry_run: dry, redrive: bulk, state: await page.locator('#redrive-state').textContent(),
    progress_values: seen.size, seconds: (Date.now() - clicked) / 1000 });

  // 6. A hostile dead letter renders as text: no dialog, the markup shown as it was sent.
  await page.goto(base + '/dead-letters/' + args.hostile);
  step('hostile', { error: await page.locator('#error').textContent(), body: await page.locator('#body').textContent(),
    images: await page.locator('main img').count(), scripts: await page.locator('script').count() });

  // 7. Another site's page posts a form to the dashboard (no CSRF token, its own Origin): refused.
  csrfServer = http.createServer((req, res) => {
    res.writeHead(200, { 'Content-Type': 'text/html' });
    res.end(`<!doctype html><form id=f method=post action="${base}/listeners/loyalty/pause">
      <input name=reason value=csrf></form><script>document.getElementById('f').submit()</script>`);
  });
  await new Promise((r) => csrfServer.listen(0, '127.0.0.1', r));
  const attacker = await context.newPage();  // its console shows the 403: not one of the dashboard's errors
  attacker.on('dialog', (d) => { result.dialogs++; d.dismiss().catch(() => {}); });
  const response = attacker.waitForResponse((r) => r.url().startsWith(base + '/listeners/'));
  await attacker.goto(`http://127.0.0.1:${csrfServer.address().port}/`);
  const refused = await response;
  step('csrf', { status: refused.status() });
} catch (e) {
  failed = String(e.stack || e);
} finally {
  await browser.close();
  csrfServer?.close();
}
result.ok = failed === null;
if (failed) result.error = failed;
console.log('result: ' + JSON.stringify(result));
process.exitCode = result.ok ? 0 : 1;
