// The operator's console in Debian's Chromium (playwright-core), against a two-node cluster:
//   node tests/browser/console.mjs --http A --http2 B --admin TOKEN --api-key KEY
//        --good PLUGIN.wasm --bad FILE --out DIR
// Signs in (a wrong token first), sees both nodes and a live rate moving while a load runs,
// finds a user whose page is connected to node B and disconnects her (her page's client is
// closed), checks and installs a good plugin (which then serves on both nodes) and is
// refused a bad one, and rotates an API
// key (the old key stops working once retired). Each page is audited with axe-core against
// WCAG 2 A and AA (any violation fails), and moved through with the keyboard. Writes a
// screenshot of each page to --out.
// Prints one line per step; exits 1 on the first failure.
import { launch } from './chromium.mjs';
import { mkdirSync } from 'node:fs';
import { createRequire } from 'node:module';
import { join } from 'node:path';

const AXE = createRequire(import.meta.url).resolve('axe-core/axe.min.js');

const args = process.argv.slice(2);
const opt = (name) => { const i = args.indexOf(`--${name}`); return i >= 0 ? args[i + 1] : undefined; };
const [a, b, admin, apiKey, good, bad, out] = ['http', 'http2', 'admin', 'api-key', 'good', 'bad', 'out'].map(opt);
if (!a || !b || !admin || !apiKey || !good || !bad || !out) {
  console.error('usage: console.mjs --http A --http2 B --admin TOKEN --api-key KEY --good WASM --bad FILE --out DIR');
  process.exit(2);
}
mkdirSync(out, { recursive: true });
const TIMEOUT = 15000;

async function publish(addr, key, body) {
  const r = await fetch(`http://${addr}/api/v1/tenants/default/publish`, {
    method: 'POST',
    headers: { Authorization: `Bearer ${key}`, 'Content-Type': 'application/json' },
    body: JSON.stringify(body),
  });
  return r.status;
}

// axe-core's audit of what the page shows now: every WCAG 2 A/AA violation, described.
async function audit(page) {
  await page.addScriptTag({ path: AXE });
  const violations = await page.evaluate(async () => {
    const result = await window.axe.run(document, { runOnly: ['wcag2a', 'wcag2aa', 'wcag21a', 'wcag21aa'] });
    return result.violations.map((v) => `${v.id} (${v.impact}): ${v.help} at ${v.nodes.map((n) => n.target.join(' ')).join(', ')}`);
  });
  if (violations.length) throw new Error(`accessibility: ${violations.join('; ')}`);
}

async function step(name, page, fn) {
  const started = Date.now();
  try {
    await fn();
    await audit(page);
    const shot = join(out, `${name}.png`);
    await page.screenshot({ path: shot, fullPage: true });
    console.log(`ok   ${name} (${Date.now() - started} ms, screenshot ${shot})`);
  } catch (e) {
    await page.screenshot({ path: join(out, `${name}-failed.png`), fullPage: true }).catch(() => {});
    console.log(`FAIL ${name}: ${e.message.split('\n')[0]}`);
    throw e;
  }
}

const browser = await launch();
let failed = false;
try {
  // A laptop screen.
  // bypassCSP: the test's own waitForFunction evaluates strings, which the console's policy
  // forbids to the page.
  const page = await browser.newPage({ viewport: { width: 1366, height: 768 }, bypassCSP: true });
  page.on('dialog', (dialog) => dialog.accept());

  await step('signin', page, async () => {
    await page.goto(`http://${a}/admin`);
    await audit(page);
    await page.getByLabel('Admin token').fill('not-the-token-at-all');
    await page.keyboard.press('Enter');
    await page.getByRole('alert').filter({ hasText: 'Not signed in' }).waitFor({ timeout: TIMEOUT });
    await page.getByLabel('Admin token').fill(admin);
    await page.getByRole('button', { name: 'Sign in' }).click();
    await page.getByRole('heading', { name: 'Cluster' }).waitFor({ timeout: TIMEOUT });
  });

  await step('cluster', page, async () => {
    // Both nodes, each ready.
    await page.waitForFunction(() => document.querySelectorAll('#nodes tbody tr .yes').length === 2, null, { timeout: TIMEOUT });
    // A load through node B; the rates move.
    const until = Date.now() + 4000;
    const load = (async () => {
      let i = 0;
      while (Date.now() < until) {
        await Promise.all(Array.from({ length: 20 }, () =>
          publish(b, apiKey, { destination: '/topic/load', content: `m${i++}` })));
      }
    })();
    await page.waitForFunction(() => [...document.querySelectorAll('#nodes .rate-in')]
      .some((cell) => Number(cell.textContent) > 0), null, { timeout: TIMEOUT });
    await load;
    // Each node has its own chart of the last minute.
    const sparks = await page.locator('#nodes svg.spark').count();
    if (sparks !== 2) throw new Error(`${sparks} node charts`);
    const caption = await page.locator('#chart-now').textContent();
    if (!/\d+ in/.test(caption)) throw new Error(`the chart says ${caption}`);
  });

  await step('users', page, async () => {
    // Alice's page: the seed's client code (sockjs-client + stompjs) on node B.
    const alice = await browser.newPage();
    await alice.goto(`http://${b}/test.html?user=alice&client=legacy&via=sockjs&transport=websocket`);
    await alice.waitForFunction(() => window.testState === 'subscribed', null, { timeout: TIMEOUT });
    // By keyboard: the section links are reachable and follow Enter.
    await page.getByRole('link', { name: 'Users' }).focus();
    await page.keyboard.press('Enter');
    const users = page.locator('#view-users');
    await users.getByLabel('Tenant', { exact: true }).selectOption('default');
    await users.getByLabel('User', { exact: true }).fill('alice');
    await page.getByRole('button', { name: 'Look up' }).click();
    await page.locator('#user-state').filter({ hasText: 'alice is online' }).waitFor({ timeout: TIMEOUT });
    const where = await page.locator('#user-state').textContent();
    if (!where.includes('browser-b')) throw new Error(`alice not seen on node B: ${where}`);
    await page.getByRole('button', { name: 'Disconnect alice' }).click();
    await page.locator('#user-state').filter({ hasText: '1 session(s) closed' }).waitFor({ timeout: TIMEOUT });
    // Her page's client is closed (stompjs reports the ERROR, then the lost connection).
    await alice.waitForFunction(() => String(window.testState).startsWith('error'), null, { timeout: TIMEOUT });
    await alice.close();
    await page.getByRole('button', { name: 'Look up' }).click();
    await page.locator('#user-state').filter({ hasText: 'alice is offline' }).waitFor({ timeout: TIMEOUT });
  });

  await step('plugins', page, async () => {
    await page.getByRole('link', { name: 'Tenants' }).focus();
    await page.keyboard.press('Enter');
    await page.locator('#tenants tbody tr[data-tenant="default"]').waitFor({ timeout: TIMEOUT });
    await page.getByLabel('Plugin (.wasm)').setInputFiles(bad);
    await page.getByRole('button', { name: 'Check' }).click();
    await page.locator('#plugin-result').filter({ hasText: 'failed the check' }).waitFor({ timeout: TIMEOUT });
    if (!(await page.getByRole('button', { name: 'Install' }).isDisabled())) throw new Error('a bad plugin could be installed');
    await page.getByLabel('Plugin (.wasm)').setInputFiles(good);
    await page.getByRole('button', { name: 'Check' }).click();
    await page.locator('#plugin-result').filter({ hasText: 'passed the check' }).waitFor({ timeout: 60000 });
    await page.getByRole('button', { name: 'Install' }).click();
    await page.locator('#plugin-result').filter({ hasText: 'Installed on default: wasm' }).waitFor({ timeout: 60000 });
    await page.locator('#tenants tbody tr[data-tenant="default"]').filter({ hasText: 'wasm' }).waitFor({ timeout: TIMEOUT });
    // Installed through node A, it serves on node B too.
    const status = async (addr) => (await fetch(`http://${addr}/admin/v1/tenants/default/plugin`,
      { headers: { Authorization: `Bearer ${admin}` } })).json();
    const onA = await status(a);
    const deadline = Date.now() + 5000;
    while ((await status(b)).sha256 !== onA.sha256) {
      if (Date.now() > deadline) throw new Error('the plugin installed on node A does not serve on node B');
      await new Promise((r) => setTimeout(r, 50));
    }
  });

  await step('keys', page, async () => {
    await page.getByRole('button', { name: 'Add an API key to default' }).click();
    const newKey = (await page.locator('#new-key-value').textContent({ timeout: TIMEOUT })).trim();
    for (const [key, what] of [[apiKey, 'old'], [newKey, 'new']]) {
      const status = await publish(a, key, { destination: '/topic/keys', content: 'rotating' });
      if (status !== 202) throw new Error(`the ${what} key answered ${status} during the rotation`);
    }
    const oldHint = `…${apiKey.slice(-4)}`;
    await page.getByRole('button', { name: `Retire key ${oldHint} of default` }).click();
    await page.getByRole('status').filter({ hasText: 'retired' }).waitFor({ timeout: TIMEOUT });
    // The old key stops working on both nodes; the new one works on both.
    const deadline = Date.now() + 2000;
    for (const addr of [a, b]) {
      while (await publish(addr, apiKey, { destination: '/topic/keys', content: 'old' }) !== 401) {
        if (Date.now() > deadline) throw new Error(`the retired key still works on ${addr}`);
        await new Promise((r) => setTimeout(r, 50));
      }
      const status = await publish(addr, newKey, { destination: '/topic/keys', content: 'new' });
      if (status !== 202) throw new Error(`the new key answered ${status} on ${addr}`);
    }
  });

  await step('signout', page, async () => {
    await page.getByRole('button', { name: 'Sign out' }).click();
    await page.getByLabel('Admin token').waitFor({ timeout: TIMEOUT });
    const kept = await page.evaluate(() => sessionStorage.length);
    if (kept !== 0) throw new Error('the token is still in the session storage');
  });
} catch (_) {
  failed = true;
} finally {
  await browser.close();
}
process.exit(failed ? 1 : 0);
