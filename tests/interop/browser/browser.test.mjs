// Headless-Chromium smoke test: a page served from 127.0.0.1 loads @stomp/stompjs (UMD bundle
// from node_modules), connects to the broker's ws://…/ws, subscribes, and shows a message that
// Node publishes. Chromium is Debian's /usr/bin/chromium driven by playwright-core.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import http from 'node:http';
import { readFileSync, mkdirSync } from 'node:fs';
import { createRequire } from 'node:module';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';
import { startBroker } from '../lib/broker.mjs';
import { connectStomp, publishWithReceipt, uniq } from '../lib/stomp.mjs';

const HERE = path.dirname(fileURLToPath(import.meta.url));
const ARTIFACTS = path.resolve(HERE, '../artifacts');
const CHROMIUM = process.env.CHROMIUM_PATH || '/usr/bin/chromium';
const require = createRequire(import.meta.url);
// require.resolve('@stomp/stompjs') → <pkg>/bundles/stomp.umd.js (its package.json is not exported).
const STOMP_UMD = path.join(path.dirname(require.resolve('@stomp/stompjs')), 'stomp.umd.min.js');

let server;
let pageOrigin;
let browser;

function serve() {
  const files = {
    '/': { type: 'text/html; charset=utf-8', body: readFileSync(path.join(HERE, 'page.html')) },
    '/stomp.umd.min.js': { type: 'application/javascript; charset=utf-8', body: readFileSync(STOMP_UMD) },
  };
  return new Promise((resolve) => {
    const s = http.createServer((req, res) => {
      const f = files[new URL(req.url, 'http://x').pathname];
      if (!f) { res.writeHead(404).end('not found'); return; }
      res.writeHead(200, { 'content-type': f.type, 'cache-control': 'no-store' }).end(f.body);
    });
    s.listen(0, '127.0.0.1', () => resolve(s));
  });
}

before(async () => {
  server = await serve();
  pageOrigin = `http://127.0.0.1:${server.address().port}`;
  browser = await chromium.launch({
    executablePath: CHROMIUM,
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
      '--disable-background-networking', '--disable-component-update', '--disable-sync'],
  });
  mkdirSync(ARTIFACTS, { recursive: true });
});

after(async () => {
  if (browser) await browser.close();
  if (server) server.close();
});

async function newPage() {
  const page = await browser.newPage();
  const consoleLines = [];
  page.on('console', (m) => consoleLines.push(`[${m.type()}] ${m.text()}`));
  page.on('pageerror', (e) => consoleLines.push(`[pageerror] ${e.message}`));
  return { page, consoleLines };
}

test('harness: Chromium loads the page and the stomp.js UMD bundle from node_modules', async () => {
  const { page, consoleLines } = await newPage();
  try {
    await page.goto(`${pageOrigin}/`);
    await page.waitForFunction(() => document.body.dataset.state !== 'loading', null, { timeout: 10000 });
    assert.equal(await page.evaluate(() => document.body.dataset.state), 'stompjs-loaded', consoleLines.join('\n'));
    assert.equal(await page.evaluate(() => typeof StompJs.Client), 'function');
    await page.screenshot({ path: path.join(ARTIFACTS, 'browser-harness.png') });
  } finally {
    await page.close();
  }
});

test('browser stomp.js connects over WebSocket, subscribes, and shows a message published from Node', async () => {
  const broker = await startBroker();
  const { page, consoleLines } = await newPage();
  let pub;
  try {
    const dest = `/topic/${uniq('browser')}`;
    const url = `${pageOrigin}/?broker=${encodeURIComponent(broker.wsUrl)}&dest=${encodeURIComponent(dest)}`;
    await page.goto(url);
    await page.waitForFunction(() => ['subscribed', 'error', 'closed'].includes(document.body.dataset.state), null, { timeout: 15000 })
      .catch(() => {});
    const state = await page.evaluate(() => document.body.dataset.state);
    const status = await page.textContent('#status');
    assert.equal(state, 'subscribed', `page status: ${status}\nconsole:\n${consoleLines.join('\n')}\n--- broker ---\n${broker.logs()}`);

    pub = await connectStomp(broker.wsUrl, { name: 'browser-pub' });
    const text = `hello browser ✓ ${uniq('m')}`;
    await publishWithReceipt(pub.client, { destination: dest, body: text, headers: { 'content-type': 'text/plain;charset=utf-8' } });
    await page.locator('#messages li', { hasText: text }).waitFor({ timeout: 10000 });
    const items = await page.locator('#messages li').allTextContents();
    assert.deepEqual(items, [text], 'the page shows exactly the published message');
    assert.equal(await page.evaluate(() => document.body.dataset.version), '1.2', 'browser negotiated STOMP 1.2');
    await page.screenshot({ path: path.join(ARTIFACTS, 'browser-smoke.png'), fullPage: true });
  } finally {
    if (pub) await pub.close().catch(() => {});
    await page.evaluate(() => window.stompClient && window.stompClient.deactivate()).catch(() => {});
    await page.close();
    await broker.stop();
  }
});
