// The order-tracking demo page (examples/web, served by demo-web) in headless Chromium keeps
// tracking an order across a node kill in a 3-node cluster behind HAProxy (scripts/cluster.sh):
//
//   page --ws--> HAProxy --> node1|node2|node3 (cluster mode, the demo's broker.toml)
//   order service (this test): SEND /app/<order-results> on a surviving node --> Kafka
//   every node: route <order-results>=/user/{json:/customerId}/queue/order-updates --> page
//
// The page places an order (SEND /app/<orders>, RECEIPT after Kafka's ack); the test then writes
// that order's status records, SIGKILLs the node the page is connected to (found by its
// stomp_connections gauge) a few steps in, and keeps writing. The page's stomp.js
// (reconnectDelay) reconnects through HAProxy to a live node and resubscribes in onConnect; the
// retained window of the route (retain_last in examples/demo/broker.toml) replays what was written
// while it was away. The page must show every status of the order, the final one included
// (at-least-once: each step shown once), then the node restarts and rejoins (/readyz 200,
// HAProxy UP).
//
// Needs Kafka (scripts/kafka.sh start; reused if running), HAProxy (scripts/install-deps.sh) and
// /usr/bin/chromium (CHROMIUM_PATH overrides). Topics, groups and the cluster topic are unique
// per run. demo-web is $DEMO_WEB_BIN, else built with `cargo build -p examples --bin demo-web`
// into the broker binary's target directory (a no-op when up to date).
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync, spawn, spawnSync } from 'node:child_process';
import { createRequire } from 'node:module';
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';
import { REPO_ROOT, brokerBin, startBroker } from '../lib/broker.mjs';
import { connectStomp, publishWithReceipt, sleep, waitFor } from '../lib/stomp.mjs';

const HERE = path.dirname(fileURLToPath(import.meta.url));
const ARTIFACTS = path.resolve(HERE, '../artifacts');
const CHROMIUM = process.env.CHROMIUM_PATH || '/usr/bin/chromium';
const require = createRequire(import.meta.url);
const STOMP_UMD = path.join(path.dirname(require.resolve('@stomp/stompjs')), 'stomp.umd.min.js');
// 24 statuses, 250 ms apart (6 s); the kill comes after the 6th. The reconnect gap (HAProxy's
// check marks the node down in ~1 s, stomp.js retries every 2 s) spans fewer records than the
// route's retained window (retain_last = 20), so a resubscribe replays all that it missed.
const STATUSES = Array.from({ length: 24 }, (_, i) => (i === 23 ? 'DELIVERED' : `STEP_${String(i + 1).padStart(2, '0')}`));
const KILL_AFTER = 6;
const STEP_MS = 250;
const NODES = ['node1', 'node2', 'node3'];

const suffix = `democl-${process.pid}-${Date.now().toString(36)}`;
const ordersTopic = `orders-${suffix}`;
const resultsTopic = `order-results-${suffix}`;
let env = null;
let tmp = null;
let web = null;
let browser = null;
const clients = [];

function script(name, ...args) {
  return execFileSync('bash', [path.join(REPO_ROOT, 'scripts', name), ...args], {
    env: env ?? process.env, encoding: 'utf8', timeout: 300000, stdio: ['ignore', 'pipe', 'pipe'],
  });
}

/** demo-web: from the environment, else built next to the broker binary. */
function demoWebBin() {
  if (process.env.DEMO_WEB_BIN) return process.env.DEMO_WEB_BIN;
  const profileDir = path.dirname(brokerBin());
  const args = ['build', '-p', 'examples', '--bin', 'demo-web'];
  if (path.basename(profileDir) === 'release') args.push('--release');
  const r = spawnSync('cargo', args, {
    cwd: REPO_ROOT,
    env: { ...process.env, CARGO_TARGET_DIR: path.dirname(profileDir) },
    stdio: ['ignore', 'pipe', 'pipe'],
    encoding: 'utf8',
  });
  if (r.status !== 0) throw new Error(`cargo ${args.join(' ')} failed:\n${r.stderr}`);
  return path.join(profileDir, 'demo-web');
}

async function connections(http) {
  try {
    const text = await (await fetch(`${http}/metrics`)).text();
    const line = text.split('\n').find((l) => l.startsWith('stomp_connections '));
    return line ? Number(line.split(' ')[1]) : 0;
  } catch { return 0; }
}

process.on('exit', () => { try { web?.kill('SIGKILL'); } catch { /* gone */ } });

after(async () => {
  for (const c of clients) await c.close().catch(() => {});
  if (browser) await browser.close().catch(() => {});
  if (web) web.kill('SIGTERM');
  if (env) { try { script('cluster.sh', 'stop'); } catch { /* already stopped */ } }
  if (tmp) rmSync(tmp, { recursive: true, force: true });
});

test('demo page in Chromium keeps tracking an order across a node kill behind HAProxy', { timeout: 240000 }, async () => {
  const kafka = script('kafka.sh', 'start').trim().split('\n').pop();
  tmp = mkdtempSync(path.join(tmpdir(), 'demo-cluster-'));
  mkdirSync(ARTIFACTS, { recursive: true });

  // Create both topics (Kafka auto-creates them on the first record) before the nodes route
  // them; the seed status names no known customer and is skipped as unroutable.
  const seed = await startBroker({ extraArgs: ['--kafka-brokers', kafka] });
  try {
    const c = await connectStomp(seed.wsUrl, { name: 'seed' });
    for (const t of [ordersTopic, resultsTopic]) {
      await publishWithReceipt(c.client, { destination: `/app/${t}`, body: '{}', headers: { 'kafka-key': 'seed' } });
    }
    await c.close();
  } finally { await seed.stop(); }

  // The demo's committed configuration, pointed at this run's topics, plus a unique cluster topic.
  const demoConfig = readFileSync(path.join(REPO_ROOT, 'examples/demo/broker.toml'), 'utf8');
  const config = demoConfig.replace('topics = ["order-results"]', `topics = ["${resultsTopic}"]`);
  assert.ok(config.includes(resultsTopic), 'examples/demo/broker.toml still routes order-results');
  const retain = Number((/^retain_last = (\d+)/m.exec(config) ?? [])[1]);
  assert.ok(retain >= 20, `the demo route retains a reconnect gap's worth of statuses (retain_last = ${retain})`);
  const configPath = path.join(tmp, 'broker.toml');
  writeFileSync(configPath, `${config}\n[cluster]\ntopic = "cluster-${suffix}"\n`);
  env = {
    ...process.env,
    CLUSTER_DIR: path.join(tmp, 'cluster'),
    CLUSTER_CONFIG: configPath,
    CLUSTER_GROUP_ID: `group-${suffix}`,
  };
  const addrs = Object.fromEntries(script('cluster.sh', 'start').split('\n').filter((l) => l.includes('='))
    .map((l) => [l.slice(0, l.indexOf('=')), l.slice(l.indexOf('=') + 1)]));
  assert.match(addrs.CLUSTER_WS ?? '', /^ws:\/\/127\.0\.0\.1:\d+\/ws$/);

  // The page server.
  const portFile = path.join(tmp, 'web-port');
  web = spawn(demoWebBin(), ['--listen', '127.0.0.1:0', '--port-file', portFile, '--stomp-js', STOMP_UMD],
    { cwd: REPO_ROOT, stdio: 'ignore' });
  await waitFor(() => existsSync(portFile) && readFileSync(portFile, 'utf8').trim(), { timeout: 20000, what: 'demo-web port file' });
  const webUrl = `http://${readFileSync(portFile, 'utf8').trim()}/`;

  browser = await chromium.launch({
    executablePath: CHROMIUM,
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
      '--disable-background-networking', '--disable-component-update', '--disable-sync'],
  });
  const page = await (await browser.newContext({ viewport: { width: 1100, height: 900 } })).newPage();
  const consoleLines = [];
  page.on('console', (m) => consoleLines.push(`[${m.type()}] ${m.text()}`));
  page.on('pageerror', (e) => consoleLines.push(`[pageerror] ${e.message}`));
  const diag = async () => `state: ${await page.textContent('#state').catch(() => '?')}\nevent log:\n${
    (await page.locator('#log li').allTextContents().catch(() => [])).join('\n')}\nconsole:\n${consoleLines.join('\n')}`;
  // The page connects through HAProxy's WebSocket front end.
  await page.goto(`${webUrl}?broker=${encodeURIComponent(addrs.CLUSTER_WS)}&orders=${encodeURIComponent(ordersTopic)}`);
  await page.fill('#user', 'alice');
  await page.click('#connect');
  await page.waitForFunction(() => document.body.dataset.subscribed === 'true', null, { timeout: 20000 })
    .catch(async (e) => { throw new Error(`${e.message}\n${await diag()}`); });

  // Start tracking an order: Place order (SEND /app/<orders>, RECEIPT after Kafka's ack).
  await page.click('#place');
  const orderId = await page.evaluate(() => window.demo.lastOrderId);
  assert.match(orderId, /^alice-/);
  await page.waitForFunction((id) => /accepted by Kafka/.test(
    document.querySelector(`#orders .order[data-order-id="${id}"] .send`)?.textContent ?? ''), orderId, { timeout: 20000 })
    .catch(async (e) => { throw new Error(`${e.message}\n${await diag()}`); });

  // The page's node: the only one with a connection (the order service connects afterwards).
  let mine = [];
  await waitFor(async () => {
    const counts = await Promise.all(NODES.map((n) => connections(addrs[`CLUSTER_${n.toUpperCase()}_HTTP`])));
    mine = NODES.filter((_, i) => counts[i] > 0);
    return mine.length === 1;
  }, { timeout: 10000, what: "the page's node" });
  const victim = mine[0];
  const other = NODES.find((n) => n !== victim);
  // The order service writes the statuses through a surviving node (RECEIPT after Kafka's ack).
  const svcUrl = `${addrs[`CLUSTER_${other.toUpperCase()}_HTTP`].replace('http://', 'ws://')}/ws`;
  const svc = await connectStomp(svcUrl, { name: 'order-service', connectHeaders: { login: 'order-service' } });
  clients.push(svc);

  const shown = () => page.evaluate((id) => {
    const o = document.querySelector(`#orders .order[data-order-id="${id}"]`);
    return o ? {
      steps: [...o.querySelectorAll('.steps li')].map((li) => Number(li.dataset.step)),
      statuses: [...o.querySelectorAll('.steps li')].map((li) => li.dataset.status),
      done: o.classList.contains('done'),
    } : null;
  }, orderId);

  let killedAt = 0;
  for (let i = 0; i < STATUSES.length; i++) {
    if (i === KILL_AFTER) {
      // The steps so far are on the page before the kill: tracking works.
      await waitFor(async () => ((await shown())?.steps.length ?? 0) >= KILL_AFTER, { timeout: 15000, what: 'the first statuses on the page' })
        .catch(async (e) => { throw new Error(`${e.message}\n${await diag()}`); });
      script('cluster.sh', 'kill', victim);
      killedAt = Date.now();
    }
    const body = JSON.stringify({
      orderId, customerId: 'alice', status: STATUSES[i], step: i + 1, totalSteps: STATUSES.length, at: Date.now(),
    });
    await publishWithReceipt(svc.client, {
      destination: `/app/${resultsTopic}`, body, headers: { 'kafka-key': orderId, 'content-type': 'application/json' },
    });
    await sleep(STEP_MS);
  }

  // Every status, the final one included, each once; the page went through a reconnect.
  await waitFor(async () => (await shown())?.done, { timeout: 60000, interval: 100, what: 'every status of the order on the page' })
    .catch(async (e) => { throw new Error(`${e.message}\nshown: ${JSON.stringify(await shown())}\n${await diag()}`); });
  const s = await shown();
  assert.deepEqual([...s.steps].sort((a, b) => a - b), STATUSES.map((_, i) => i + 1), 'every status shown once');
  assert.ok(s.statuses.includes('DELIVERED'), 'the final status arrived');
  assert.equal(await page.evaluate(() => document.body.dataset.state), 'connected');
  const events = await page.locator('#log li').allTextContents();
  assert.ok(events.some((e) => e.includes('reconnecting')), `the page reconnected:\n${events.join('\n')}`);
  assert.ok(events.filter((e) => e.includes('SUBSCRIBED')).length >= 2, `the page resubscribed:\n${events.join('\n')}`);
  assert.ok(!consoleLines.some((l) => l.startsWith('[pageerror]')), consoleLines.join('\n'));
  console.log(`demo cluster failover: ${victim} killed; every status shown ${Date.now() - killedAt} ms after the kill; `
    + `replayed ${await page.locator('#orders .steps li.replayed').count()}`);
  await page.screenshot({ path: path.join(ARTIFACTS, 'demo-cluster-failover.png'), fullPage: true });
  await page.evaluate(() => window.stompClient && window.stompClient.deactivate()).catch(() => {});

  script('cluster.sh', 'restart', victim);
  const status = script('cluster.sh', 'status');
  assert.ok(status.split('\n').some((l) => l.startsWith(`${victim}: running`) && l.includes('readyz=200') && l.includes('haproxy=UP')), status);
});
