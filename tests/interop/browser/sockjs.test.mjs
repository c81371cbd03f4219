// Headless Chromium with WebSocket removed from the page: sockjs-client's browser bundle must
// fall back to an HTTP transport; stomp.js (UMD bundle) connects through it, subscribes and
// shows a message that Node publishes over the broker's plain WebSocket endpoint.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import http from 'node:http';
import { readFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import path from 'node:path';
import { chromium } from 'playwright-core';
import { startBroker } from '../lib/broker.mjs';
import { connectStomp, publishWithReceipt, uniq } from '../lib/stomp.mjs';

const CHROMIUM = process.env.CHROMIUM_PATH || '/usr/bin/chromium';
const require = createRequire(import.meta.url);
const STOMP_UMD = path.join(path.dirname(require.resolve('@stomp/stompjs')), 'stomp.umd.min.js');
const SOCKJS_MIN = path.join(path.dirname(require.resolve('sockjs-client/package.json')), 'dist', 'sockjs.min.js');

const PAGE = `<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>SockJS fallback</title>
<script src="/sockjs.min.js"></script><script src="/stomp.umd.min.js"></script></head>
<body data-state="loading"><p id="status">loading</p><ul id="messages"></ul>
<script>
(function () {
  const params = new URLSearchParams(location.search);
  const set = (s) => { document.body.dataset.state = s; document.getElementById('status').textContent = s; };
  window.hadWebSocket = typeof window.WebSocket !== 'undefined';
  let sock;
  const client = new StompJs.Client({
    webSocketFactory: () => (sock = new SockJS(params.get('sockjs'))),
    reconnectDelay: 0,
    onConnect: () => {
      window.sockjsTransport = sock.transport;
      client.watchForReceipt('sub-1', () => set('subscribed'));
      client.subscribe(params.get('dest'), (m) => {
        const li = document.createElement('li');
        li.textContent = m.body;
        document.getElementById('messages').appendChild(li);
      }, { receipt: 'sub-1' });
    },
    onStompError: (f) => set('error: ' + f.headers.message),
  });
  client.activate();
})();
</script></body></html>`;

let server;
let pageOrigin;
let browser;

before(async () => {
  const files = {
    '/': { type: 'text/html; charset=utf-8', body: PAGE },
    '/stomp.umd.min.js': { type: 'application/javascript; charset=utf-8', body: readFileSync(STOMP_UMD) },
    '/sockjs.min.js': { type: 'application/javascript; charset=utf-8', body: readFileSync(SOCKJS_MIN) },
  };
  server = await new Promise((resolve) => {
    const s = http.createServer((req, res) => {
      const f = files[new URL(req.url, 'http://x').pathname];
      if (!f) { res.writeHead(404).end('not found'); return; }
      res.writeHead(200, { 'content-type': f.type, 'cache-control': 'no-store' }).end(f.body);
    });
    s.listen(0, '127.0.0.1', () => resolve(s));
  });
  pageOrigin = `http://127.0.0.1:${server.address().port}`;
  browser = await chromium.launch({
    executablePath: CHROMIUM,
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
      '--disable-background-networking', '--disable-component-update', '--disable-sync'],
  });
});

after(async () => {
  if (browser) await browser.close();
  if (server) server.close();
});

test('Chromium without WebSocket: stomp.js over a SockJS HTTP fallback subscribes and receives', async () => {
  const broker = await startBroker();
  const page = await browser.newPage();
  const consoleLines = [];
  page.on('console', (m) => consoleLines.push(`[${m.type()}] ${m.text()}`));
  page.on('pageerror', (e) => consoleLines.push(`[pageerror] ${e.message}`));
  const publisher = await connectStomp(broker.wsUrl);
  try {
    await page.addInitScript(() => { delete window.WebSocket; window.WebSocket = undefined; });
    const dest = `/topic/${uniq('sockjs-browser')}`;
    const q = new URLSearchParams({ sockjs: `${broker.httpUrl}/sockjs`, dest });
    await page.goto(`${pageOrigin}/?${q}`);
    await page.waitForFunction(() => document.body.dataset.state !== 'loading', null, { timeout: 15000 })
      .catch((e) => { throw new Error(`${e.message}\n${consoleLines.join('\n')}`); });
    assert.equal(await page.evaluate(() => document.body.dataset.state), 'subscribed', consoleLines.join('\n'));
    assert.equal(await page.evaluate(() => window.hadWebSocket), false, 'WebSocket was removed');
    const transport = await page.evaluate(() => window.sockjsTransport);
    assert.ok(transport && transport !== 'websocket', `fallback transport in use: ${transport}`);
    const body = `from node ${uniq('m')} ✓`;
    await publishWithReceipt(publisher.client, { destination: dest, body });
    await page.waitForFunction((b) => [...document.querySelectorAll('#messages li')].some((li) => li.textContent === b),
      body, { timeout: 10000 });
    const metrics = await (await fetch(`${broker.httpUrl}/metrics`)).text();
    assert.match(metrics, /stomp_sockjs_sessions_total\{transport="websocket"\} 0/);
    assert.match(metrics, /stomp_sockjs_sessions 1/);
  } finally {
    await publisher.close().catch(() => {});
    await page.close();
    await broker.stop();
  }
});
