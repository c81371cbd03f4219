// The broker's own status page (GET / on the HTTP port), in headless Chromium:
// it loads with no external assets, goes live over its own WebSocket
// subscription to /topic/broker.stats, and shows connections, subscriptions,
// top destinations and message rates as they change.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { mkdirSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';
import { startBroker } from '../lib/broker.mjs';
import { connectStomp, subscribeWithReceipt, publishWithReceipt, sleep } from '../lib/stomp.mjs';

const HERE = path.dirname(fileURLToPath(import.meta.url));
const ARTIFACTS = path.resolve(HERE, '../artifacts');
let broker;
let browser;

before(async () => {
  broker = await startBroker();
  browser = await chromium.launch({
    executablePath: process.env.CHROMIUM_PATH || '/usr/bin/chromium',
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
      '--disable-background-networking', '--disable-component-update', '--disable-sync'],
  });
  mkdirSync(ARTIFACTS, { recursive: true });
});

after(async () => {
  if (browser) await browser.close();
  if (broker) await broker.stop();
});

test('status page shows live connections, top destinations and rates', async () => {
  const page = await browser.newPage();
  const requests = [];
  page.on('request', (r) => requests.push(r.url()));
  await page.goto(broker.httpUrl + '/');
  await page.waitForFunction(() => document.getElementById('state').textContent === 'live', null, { timeout: 10000 });

  // Load: 3 subscribers on one order topic and a publisher sending for a few seconds.
  const subs = [];
  for (let i = 0; i < 3; i++) {
    const c = await connectStomp(broker.wsUrl);
    await subscribeWithReceipt(c.client, '/topic/order.status-page');
    subs.push(c);
  }
  const pub = await connectStomp(broker.wsUrl);
  const stop = Date.now() + 3000;
  const publishing = (async () => {
    while (Date.now() < stop) {
      await publishWithReceipt(pub.client, { destination: '/topic/order.status-page', body: 'tick' });
      await sleep(20);
    }
  })();

  // The page's own connection + 3 subscribers + publisher = 5 connections.
  await page.waitForFunction(() => Number(document.getElementById('connections').textContent.replace(/,/g, '')) >= 5, null, { timeout: 10000 });
  await page.waitForFunction(() => document.getElementById('top').textContent.includes('/topic/order.status-page'), null, { timeout: 10000 });
  await page.waitForFunction(() => Number(document.getElementById('rate_out').textContent.replace(/,/g, '')) > 0, null, { timeout: 10000 });
  await publishing;
  const topRow = await page.$eval('#top tr', (tr) => [...tr.cells].map((c) => c.textContent));
  assert.equal(topRow[0], '/topic/order.status-page');
  assert.equal(Number(topRow[1]), 3);
  await page.screenshot({ path: path.join(ARTIFACTS, 'status-page.png'), fullPage: true });
  // Served entirely by the broker: no request left 127.0.0.1.
  for (const url of requests) assert.ok(url.startsWith(broker.httpUrl), `external request: ${url}`);
  for (const c of [...subs, pub]) await c.client.deactivate();
  await page.close();
});
