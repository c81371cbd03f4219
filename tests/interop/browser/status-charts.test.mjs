// The status page's live charts (messages in/out per second, connections, Kafka bridge lag,
// cluster lag over the last 5 minutes), in headless Chromium, against a broker with the Kafka
// bridge and cluster mode on: each chart keeps a ring of the per-second samples the page
// receives and draws it as an SVG polyline (data-points = ring length); the traffic this test
// makes shows up as a non-zero point; and the page loads nothing from anywhere but the broker.
//
// Needs KAFKA_BOOTSTRAP (scripts/test.sh exports it); without it the test FAILS, never skips.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, writeFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { chromium } from 'playwright-core';
import { startBroker } from '../lib/broker.mjs';
import { connectStomp, subscribeWithReceipt, publishWithReceipt, uniq, waitFor, sleep } from '../lib/stomp.mjs';

let broker;
let browser;
let dir;
let topic;

before(async () => {
  const bootstrap = process.env.KAFKA_BOOTSTRAP;
  assert.ok(bootstrap, 'KAFKA_BOOTSTRAP is not set: this test needs a real Kafka (scripts/kafka.sh start; '
    + 'export KAFKA_BOOTSTRAP=$(scripts/kafka.sh bootstrap))');
  topic = uniq('status-charts');
  dir = mkdtempSync(path.join(tmpdir(), 'stomp-status-charts-'));
  const config = path.join(dir, 'broker.toml');
  writeFileSync(config, [
    '[kafka]',
    'stats_interval = 1',
    'auto_offset_reset = "earliest"',
    '[kafka.client]',
    '"topic.metadata.refresh.interval.ms" = "1000"',
    '[cluster]',
    'enabled = true',
    `topic = "${uniq('status-charts-cluster')}"`,
    '',
  ].join('\n'));
  broker = await startBroker({
    extraArgs: [
      '--config', config,
      '--kafka-brokers', bootstrap,
      '--kafka-group-id', uniq('status-charts'),
      '--node-id', 'charts-1',
      '--route', `${topic}=/topic/charts.{key}`,
    ],
  });
  browser = await chromium.launch({
    executablePath: process.env.CHROMIUM_PATH || '/usr/bin/chromium',
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
      '--disable-background-networking', '--disable-component-update', '--disable-sync'],
  });
});

after(async () => {
  if (browser) await browser.close();
  if (broker) await broker.stop();
  if (dir) rmSync(dir, { recursive: true, force: true });
});

/** Each chart's ring length (data-points), its polyline's points and whether it is shown. */
const charts = (page) => page.evaluate(() => Object.fromEntries(
  [...document.querySelectorAll('.chart')].map((el) => {
    const pts = (el.querySelector('polyline').getAttribute('points') || '').trim();
    return [el.id.replace(/^chart-/, ''), {
      ring: Number(el.dataset.points || 0),
      points: pts ? pts.split(/\s+/).map((p) => p.split(',').map(Number)) : [],
      hidden: el.hidden,
    }];
  }),
));

test('status page charts draw the last minutes of rates, connections, Kafka and cluster lag', async () => {
  // The bridge's topic comes into being with the first SEND to /app/<topic> (the RECEIPT
  // means Kafka acknowledged it). Then ready: Kafka bridge assigned and cluster joined, so the
  // stats carry kafka and cluster objects.
  const producer = await connectStomp(broker.wsUrl);
  await publishWithReceipt(producer.client, { destination: `/app/${topic}`, headers: { 'kafka-key': 'k' }, body: 'first' });
  await producer.client.deactivate();
  await waitFor(async () => (await fetch(`${broker.httpUrl}/readyz`)).status === 200,
    { timeout: 60000, interval: 200, what: '/readyz 200' });

  const page = await browser.newPage();
  const requests = [];
  page.on('request', (r) => requests.push(r.url()));
  page.on('websocket', (ws) => requests.push(ws.url()));
  await page.goto(broker.httpUrl + '/');
  await page.waitForFunction(() => document.getElementById('state').textContent === 'live', null, { timeout: 10000 });

  const sub = await connectStomp(broker.wsUrl);
  await subscribeWithReceipt(sub.client, '/topic/charts.traffic');
  const pub = await connectStomp(broker.wsUrl);
  const stop = Date.now() + 3000;
  while (Date.now() < stop) {
    await publishWithReceipt(pub.client, { destination: '/topic/charts.traffic', body: 'tick' });
    await sleep(10);
  }

  // A sample a second: every chart has a ring of ≥ 2 samples, drawn as ≥ 2 polyline points.
  await page.waitForFunction(() => ['rate_in', 'rate_out', 'connections', 'kafka_lag', 'cluster_lag']
    .every((n) => Number(document.getElementById(`chart-${n}`).dataset.points || 0) >= 4),
  null, { timeout: 15000 });
  const c = await charts(page);
  for (const name of ['rate_in', 'rate_out', 'connections', 'kafka_lag', 'cluster_lag']) {
    assert.equal(c[name].hidden, false, `${name} chart shown`);
    assert.ok(c[name].ring >= 4, `${name}: ring of ${c[name].ring}`);
    assert.equal(c[name].points.length, c[name].ring, `${name}: one point per sample`);
    for (const [x, y] of c[name].points) {
      assert.ok(x >= 0 && x <= 300 && y >= 0 && y <= 70, `${name}: point ${x},${y} inside the chart`);
    }
    // x grows with time: the newest sample is drawn rightmost.
    const xs = c[name].points.map((p) => p[0]);
    assert.deepEqual(xs, [...xs].sort((a, b) => a - b), `${name}: points in time order`);
  }
  // The traffic drew points above the baseline (y = 69 is zero) on the rate charts; the
  // connections chart shows the page's, the subscriber's and the publisher's connections.
  for (const name of ['rate_in', 'rate_out', 'connections']) {
    assert.ok(c[name].points.some(([, y]) => y < 60), `${name}: a non-zero point in ${JSON.stringify(c[name].points)}`);
  }
  const now = await page.$eval('#chart-connections .max', (e) => e.textContent);
  assert.match(now, /^now [3-9]/, `connections label: ${now}`);

  // The ring keeps at most 5 minutes: samples older than the window are dropped (sped-up clock).
  const trimmed = await page.evaluate(() => {
    const real = Date.now;
    const base = real();
    Date.now = () => base + 6 * 60 * 1000; // six minutes later
    try {
      render({ rate_in_per_s: 1, rate_out_per_s: 1, connections: 1 });
    } finally {
      Date.now = real;
    }
    return Number(document.getElementById('chart-rate_in').dataset.points);
  });
  assert.equal(trimmed, 1, 'samples older than 5 minutes leave the ring');

  // Served entirely by the broker: no request (HTTP or WebSocket) left it.
  const origins = [broker.httpUrl, broker.wsUrl.replace(/\/ws$/, '')];
  for (const url of requests) {
    assert.ok(origins.some((o) => url.startsWith(o)), `external request: ${url}`);
  }
  await sub.client.deactivate();
  await pub.client.deactivate();
  await page.close();
});
