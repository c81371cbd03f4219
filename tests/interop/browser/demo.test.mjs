// End-to-end test of the order-tracking demo (scripts/demo.sh, docs/demo.md) in headless Chromium:
//
//   page (examples/web, served by demo-web) --SEND /app/<orders>--> stomp-broker --> Kafka <orders>
//   order-simulator: <orders> --> RECEIVED, PAYMENT_OK, PACKED, SHIPPED --> Kafka <order-results>
//   stomp-broker route <order-results>=/user/{json:/customerId}/queue/order-updates --> page
//
// Two users (alice, bob) in separate browser contexts each place an order; each page must show
// exactly its own order's four steps, in order, and nothing of the other's.
//
// Needs a real Kafka: KAFKA_BOOTSTRAP (scripts/test.sh exports it; by hand:
// `KAFKA_BOOTSTRAP=$(scripts/kafka.sh start) node --test tests/interop/browser/demo.test.mjs`).
// It fails, never skips, without one. Topics and consumer groups are unique per run.
//
// Binaries: the broker is $STOMP_BROKER_BIN (as for the other interop tests); order-simulator and
// demo-web are $ORDER_SIMULATOR_BIN / $DEMO_WEB_BIN, else built here with
// `cargo build -p examples --bin order-simulator --bin demo-web` into the broker binary's target
// directory (a no-op when up to date).
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import { createRequire } from 'node:module';
import { mkdirSync, mkdtempSync, readFileSync, writeFileSync, rmSync, existsSync } from 'node:fs';
import net from 'node:net';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';
import { startBroker, startBrokerOn, brokerBin, REPO_ROOT } from '../lib/broker.mjs';

const HERE = path.dirname(fileURLToPath(import.meta.url));
const ARTIFACTS = path.resolve(HERE, '../artifacts');
const CHROMIUM = process.env.CHROMIUM_PATH || '/usr/bin/chromium';
const require = createRequire(import.meta.url);
const STOMP_UMD = path.join(path.dirname(require.resolve('@stomp/stompjs')), 'stomp.umd.min.js');
const STEPS = ['RECEIVED', 'PAYMENT_OK', 'PACKED', 'SHIPPED'];
const STEP_DELAY_MS = 250;
const verbose = !!process.env.STOMP_INTEROP_VERBOSE;
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const T0 = Date.now();
const mark = (what) => { if (verbose) process.stderr.write(`[demo +${Date.now() - T0} ms] ${what}\n`); };

const suffix = `demo-${process.pid}-${Date.now().toString(36)}`;
const ordersTopic = `orders-${suffix}`;
const resultsTopic = `order-results-${suffix}`;

let tmp;
let kafka;
let simulator;
let web;
let broker;
let browser;
let webUrl;
let brokerArgs;

function kafkaBootstrap() {
  const k = (process.env.KAFKA_BOOTSTRAP || '').trim();
  if (!k) {
    throw new Error('demo.test.mjs needs a real Kafka: set KAFKA_BOOTSTRAP (scripts/test.sh does; by hand: '
      + 'KAFKA_BOOTSTRAP=$(scripts/kafka.sh start) node --test tests/interop/browser/demo.test.mjs)');
  }
  return k;
}

async function assertReachable(bootstrap) {
  const [host, port] = bootstrap.split(',')[0].split(':');
  await new Promise((resolve, reject) => {
    const s = net.connect({ host, port: Number(port) });
    const t = setTimeout(() => { s.destroy(); reject(new Error(`Kafka at ${bootstrap}: connect timed out`)); }, 3000);
    s.on('connect', () => { clearTimeout(t); s.end(); resolve(); });
    s.on('error', (e) => { clearTimeout(t); reject(new Error(`Kafka at ${bootstrap} is not reachable (${e.code}); run scripts/kafka.sh start`)); });
  });
}

/** order-simulator and demo-web: from the environment, else built next to the broker binary. */
function exampleBins() {
  if (process.env.ORDER_SIMULATOR_BIN && process.env.DEMO_WEB_BIN) {
    return { simulator: process.env.ORDER_SIMULATOR_BIN, web: process.env.DEMO_WEB_BIN };
  }
  // <target>/<profile>/stomp-broker → build into the same <target> and profile.
  const profileDir = path.dirname(brokerBin());
  const profile = path.basename(profileDir);
  const targetDir = path.dirname(profileDir);
  const args = ['build', '-p', 'examples', '--bin', 'order-simulator', '--bin', 'demo-web'];
  if (profile === 'release') args.push('--release');
  const t0 = Date.now();
  const r = spawnSync('cargo', args, {
    cwd: REPO_ROOT,
    env: { ...process.env, CARGO_TARGET_DIR: targetDir },
    stdio: ['ignore', 'pipe', 'pipe'],
    encoding: 'utf8',
  });
  if (r.status !== 0) {
    throw new Error(`cargo ${args.join(' ')} (CARGO_TARGET_DIR=${targetDir}) failed:\n${r.stderr}`);
  }
  if (verbose) process.stderr.write(`[demo] built examples in ${Date.now() - t0} ms\n`);
  return { simulator: path.join(profileDir, 'order-simulator'), web: path.join(profileDir, 'demo-web') };
}

/** Spawns a helper process, keeping the last lines of its output for failure messages. */
function startProcess(name, bin, args) {
  if (!existsSync(bin)) throw new Error(`${name} binary not found: ${bin}`);
  const proc = spawn(bin, args, { cwd: REPO_ROOT, stdio: ['ignore', 'pipe', 'pipe'] });
  const lines = [];
  let exit = null;
  const onData = (chunk) => {
    for (const line of chunk.toString('utf8').split('\n')) {
      if (!line) continue;
      lines.push(line);
      if (lines.length > 300) lines.shift();
      if (verbose) process.stderr.write(`[${name}] ${line}\n`);
    }
  };
  proc.stdout.on('data', onData);
  proc.stderr.on('data', onData);
  const exited = new Promise((resolve) => proc.on('exit', (code, signal) => { exit = { code, signal }; resolve(exit); }));
  return {
    proc,
    logs: () => lines.join('\n'),
    has: (text) => lines.some((l) => l.includes(text)),
    get exit() { return exit; },
    async stop() {
      if (exit) return exit;
      proc.kill('SIGTERM');
      const r = await Promise.race([exited, sleep(10000).then(() => null)]);
      if (!r) { proc.kill('SIGKILL'); return exited; }
      return r;
    },
  };
}

async function waitFor(what, cond, timeoutMs, diag) {
  const deadline = Date.now() + timeoutMs;
  while (Date.now() < deadline) {
    if (await cond()) return;
    await sleep(50);
  }
  throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}\n${diag ? diag() : ''}`);
}

function diagnostics() {
  return [
    `--- order-simulator ---\n${simulator ? simulator.logs().split('\n').slice(-40).join('\n') : ''}`,
    `--- stomp-broker ---\n${broker ? broker.logs().split('\n').slice(-40).join('\n') : ''}`,
  ].join('\n');
}

process.on('exit', () => {
  for (const p of [simulator, web]) { try { p?.proc.kill('SIGKILL'); } catch { /* gone */ } }
});

before(async () => {
  kafka = kafkaBootstrap();
  await assertReachable(kafka);
  const bins = exampleBins();
  tmp = mkdtempSync(path.join(tmpdir(), 'stomp-demo-test-'));
  mkdirSync(ARTIFACTS, { recursive: true });

  // 1. The simulator creates both topics (3 partitions) before it reports ready.
  simulator = startProcess('order-simulator', bins.simulator, [
    '--brokers', kafka, '--orders-topic', ordersTopic, '--results-topic', resultsTopic,
    '--group-id', `sim-${suffix}`, '--partitions', '3', '--step-delay-ms', String(STEP_DELAY_MS),
  ]);
  await waitFor('order-simulator ready', () => simulator.has('order-simulator ready') || simulator.exit, 60000, diagnostics);
  assert.ok(!simulator.exit, `order-simulator exited: ${JSON.stringify(simulator.exit)}\n${simulator.logs()}`);

  // 2. The broker with the demo's committed configuration, pointed at this run's topic and group.
  const demoConfig = readFileSync(path.join(REPO_ROOT, 'examples/demo/broker.toml'), 'utf8');
  const config = demoConfig
    .replace('topics = ["order-results"]', `topics = ["${resultsTopic}"]`)
    .replace('group_id = "stomp-broker-demo"', `group_id = "broker-${suffix}"`);
  assert.notEqual(config, demoConfig, 'examples/demo/broker.toml still has the order-results route and group');
  assert.ok(config.includes(resultsTopic) && config.includes(`broker-${suffix}`), 'config rewritten');
  const configPath = path.join(tmp, 'broker.toml');
  writeFileSync(configPath, config);
  brokerArgs = ['--config', configPath, '--kafka-brokers', kafka];
  broker = await startBroker({ extraArgs: brokerArgs });

  // 3. The page server (examples/web + the stomp.js bundle), on a free port.
  const portFile = path.join(tmp, 'web-port');
  web = startProcess('demo-web', bins.web, ['--listen', '127.0.0.1:0', '--port-file', portFile, '--stomp-js', STOMP_UMD]);
  await waitFor('demo-web port file', () => existsSync(portFile) || web.exit, 20000, () => web.logs());
  webUrl = `http://${readFileSync(portFile, 'utf8').trim()}/`;

  browser = await chromium.launch({
    executablePath: CHROMIUM,
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
      '--disable-background-networking', '--disable-component-update', '--disable-sync'],
  });
}, { timeout: 600000 });

after(async () => {
  if (browser) await browser.close().catch(() => {});
  if (broker) await broker.stop();
  if (web) await web.stop();
  if (simulator) await simulator.stop();
  if (tmp) rmSync(tmp, { recursive: true, force: true });
});

/** A page in its own browser context (own cookies/storage: a different browser, in effect). */
async function openAs(user) {
  const context = await browser.newContext({ viewport: { width: 1100, height: 720 } });
  const page = await context.newPage();
  const consoleLines = [];
  page.on('console', (m) => consoleLines.push(`[${m.type()}] ${m.text()}`));
  page.on('pageerror', (e) => consoleLines.push(`[pageerror] ${e.message}`));
  const url = `${webUrl}?broker=${encodeURIComponent(broker.wsUrl)}&orders=${encodeURIComponent(ordersTopic)}`;
  await page.goto(url);
  await page.fill('#user', user);
  await page.click('#connect');
  await page.waitForFunction(() => document.body.dataset.subscribed === 'true', null, { timeout: 15000 })
    .catch(async () => {
      const state = await page.textContent('#state');
      throw new Error(`${user}: not subscribed (state: ${state})\nconsole:\n${consoleLines.join('\n')}\n${diagnostics()}`);
    });
  return { user, context, page, consoleLines };
}

/** What the page shows: every order card with its steps, in display order. */
function shown(page) {
  return page.evaluate(() => [...document.querySelectorAll('#orders .order')].map((o) => ({
    orderId: o.dataset.orderId,
    send: o.querySelector('.send').textContent,
    steps: [...o.querySelectorAll('.steps li')].map((li) => li.dataset.status),
    stepNumbers: [...o.querySelectorAll('.steps li')].map((li) => Number(li.dataset.step)),
  })));
}

test('demo: alice and bob each see only their own order, every step in order', { timeout: 90000 }, async () => {
  const t0 = Date.now();
  mark('test start');
  const [alice, bob] = await Promise.all([openAs('alice'), openAs('bob')]);
  mark('both pages subscribed');
  try {
    assert.equal(await alice.page.textContent('#state'), 'connected');
    assert.equal(await alice.page.isEnabled('#place'), true, 'Place order is enabled once subscribed');

    await Promise.all([alice.page.click('#place'), bob.page.click('#place')]);
    mark('orders placed');
    const aliceOrder = await alice.page.evaluate(() => window.demo.lastOrderId);
    const bobOrder = await bob.page.evaluate(() => window.demo.lastOrderId);
    assert.match(aliceOrder, /^alice-/);
    assert.match(bobOrder, /^bob-/);

    for (const [who, orderId] of [[alice, aliceOrder], [bob, bobOrder]]) {
      await waitFor(`${who.user}'s order ${orderId} to reach SHIPPED`, async () => {
        const orders = await shown(who.page);
        const mine = orders.find((o) => o.orderId === orderId);
        return mine && mine.steps.length >= STEPS.length;
      }, 45000, () => `console:\n${who.consoleLines.join('\n')}\n${diagnostics()}`);
    }
    mark('both orders shipped');
    // Both orders ran concurrently and are complete: anything misrouted would have arrived by now.
    // One more step interval for stragglers.
    await sleep(STEP_DELAY_MS * 2);

    for (const [who, mine, theirs] of [[alice, aliceOrder, bobOrder], [bob, bobOrder, aliceOrder]]) {
      const orders = await shown(who.page);
      assert.deepEqual(orders.map((o) => o.orderId), [mine], `${who.user} sees exactly their own order`);
      assert.deepEqual(orders[0].steps, STEPS, `${who.user}'s steps arrive in order, each once`);
      assert.deepEqual(orders[0].stepNumbers, [1, 2, 3, 4]);
      assert.match(orders[0].send, /accepted by Kafka/, `${who.user}'s SEND got its RECEIPT (after Kafka's ack)`);
      const text = await who.page.textContent('body');
      assert.ok(!text.includes(theirs), `${who.user}'s page mentions nothing of ${theirs}`);
      assert.equal(await who.page.evaluate(() => document.body.dataset.state), 'connected');
      assert.ok(!who.consoleLines.some((l) => l.startsWith('[pageerror]')), who.consoleLines.join('\n'));
      await who.page.screenshot({ path: path.join(ARTIFACTS, `demo-${who.user}.png`), fullPage: true });
    }
    mark(`checked and screenshots taken (test body ${Date.now() - t0} ms)`);
  } finally {
    for (const who of [alice, bob]) {
      await who.page.evaluate(() => window.stompClient && window.stompClient.deactivate()).catch(() => {});
      await who.context.close().catch(() => {});
    }
  }
});

test('demo: the page shows the outage, reconnects after a broker restart, resubscribes and tracks a new order', { timeout: 90000 }, async () => {
  const carol = await openAs('carol');
  try {
    const { stompPort, httpPort } = broker;
    await broker.stop();
    await carol.page.waitForFunction(() => ['reconnecting', 'error'].includes(document.body.dataset.state), null, { timeout: 10000 });
    assert.equal(await carol.page.isEnabled('#place'), false, 'no orders while disconnected');
    broker = await startBrokerOn(stompPort, httpPort, { extraArgs: brokerArgs });
    mark('broker restarted');
    await carol.page.waitForFunction(
      () => document.body.dataset.state === 'connected' && document.body.dataset.subscribed === 'true', null, { timeout: 20000 });
    mark('page reconnected and resubscribed');
    await carol.page.click('#place');
    const orderId = await carol.page.evaluate(() => window.demo.lastOrderId);
    await waitFor(`carol's order ${orderId} to reach SHIPPED after the restart`, async () => {
      const mine = (await shown(carol.page)).find((o) => o.orderId === orderId);
      return mine && mine.steps.length >= STEPS.length;
    }, 45000, () => `console:\n${carol.consoleLines.join('\n')}\n${diagnostics()}`);
    const mine = (await shown(carol.page)).find((o) => o.orderId === orderId);
    assert.deepEqual(mine.steps, STEPS);
    assert.match(mine.send, /accepted by Kafka/);
    const events = await carol.page.locator('#log li').allTextContents();
    assert.ok(events.some((e) => e.includes('reconnecting')), `the outage is in the event log:\n${events.join('\n')}`);
    await sleep(300); // let the progress bar's transition finish for the screenshot
    await carol.page.screenshot({ path: path.join(ARTIFACTS, 'demo-reconnect.png'), fullPage: true });
    mark('reconnect test done');
  } finally {
    await carol.page.evaluate(() => window.stompClient && window.stompClient.deactivate()).catch(() => {});
    await carol.context.close().catch(() => {});
  }
});
