// Heart-beating with a broker started with --heart-beat 200,200.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { startBroker } from '../lib/broker.mjs';
import {
  connectStomp, subscribeWithReceipt, publishWithReceipt, uniq, sleep, RawStompWs, withTimeout,
} from '../lib/stomp.mjs';

let broker;
const clients = [];

before(async () => { broker = await startBroker({ heartBeat: '200,200' }); });
after(async () => {
  for (const c of clients) await c.close().catch(() => {});
  if (broker) await broker.stop();
});

test('stomp.js with 200 ms heart-beats stays connected over 2 s idle, and messages still flow', async () => {
  const c = await connectStomp(broker.wsUrl, {
    heartbeatIncoming: 200,
    heartbeatOutgoing: 200,
    // stomp.js declares the server dead after 200 ms × this of silence (default 2); a little
    // slack for a loaded 2-core CI machine.
    heartbeatToleranceMultiplier: 3,
    name: 'hb',
  });
  clients.push(c);
  assert.equal(c.connected.headers['heart-beat'], '200,200', 'CONNECTED heart-beat reflects --heart-beat 200,200');
  const dest = `/topic/${uniq('hb')}`;
  const { inbox } = await subscribeWithReceipt(c.client, dest);
  const wsBefore = c.state.ws;
  // Idle on purpose: this test is about what happens over time with no traffic.
  await sleep(2200);
  assert.equal(c.state.heartbeatsLost, 0, 'stomp.js never declared the server dead');
  assert.equal(c.state.closes.length, 0, `WebSocket not closed (closes: ${JSON.stringify(c.state.closes)})`);
  assert.ok(c.client.connected, 'still connected');
  assert.equal(c.state.ws, wsBefore, 'same WebSocket (no reconnect)');
  assert.ok(c.state.heartbeatsReceived >= 4,
    `server heart-beats received in ~2.2 s at a 200 ms interval: ${c.state.heartbeatsReceived}`);
  await publishWithReceipt(c.client, { destination: dest, body: 'after idle' });
  const [m] = await inbox.waitCount(1);
  assert.equal(m.body, 'after idle');
});

test('a raw WebSocket client that negotiates 200 ms heart-beats and goes silent is closed by the broker', async () => {
  const raw = await RawStompWs.open(broker.wsUrl);
  try {
    const f = await raw.connect({ 'heart-beat': '200,200' });
    assert.equal(f.command, 'CONNECTED');
    assert.equal(f.headers['heart-beat'], '200,200');
    const silentSince = Date.now();
    // Send nothing. The broker expects a beat every max(200, 200) = 200 ms and gives up after
    // interval × tolerance + grace (defaults 2.0 and 5000 ms: ≈ 5.4 s; the grace is generous
    // on purpose, for throttled background tabs). Allow up to 10 s.
    const info = await withTimeout(raw.closed, 10000, 'the broker to close a silent client');
    const elapsed = info.at - silentSince;
    assert.ok(elapsed >= 400, `closed too early: after ${elapsed} ms (less than 2 × 200 ms)`);
    assert.ok(raw.heartbeats.length >= 1, `the broker sent heart-beats meanwhile (${raw.heartbeats.length})`);
  } finally {
    raw.close();
  }
});

test('a raw client that keeps sending EOL heart-beats is not closed', async () => {
  const raw = await RawStompWs.open(broker.wsUrl);
  let timer;
  try {
    const f = await raw.connect({ 'heart-beat': '200,200' });
    assert.equal(f.command, 'CONNECTED');
    timer = setInterval(() => raw.sendRaw('\n'), 100);
    await sleep(1500);
    assert.equal(raw.closeInfo, null, `closed although beating: ${JSON.stringify(raw.closeInfo)}`);
    raw.send('SUBSCRIBE', { id: 's', destination: '/topic/hb-raw', receipt: 'r1' });
    const r = await raw.frames.waitMatch((x) => x.command === 'RECEIPT' || x.command === 'ERROR');
    assert.equal(r.command, 'RECEIPT');
  } finally {
    clearInterval(timer);
    raw.close();
  }
});

test('a client that offers no heart-beats (0,0) is not closed for being silent', async () => {
  const raw = await RawStompWs.open(broker.wsUrl);
  try {
    const f = await raw.connect({ 'heart-beat': '0,0' });
    assert.equal(f.command, 'CONNECTED');
    await sleep(1500);
    assert.equal(raw.closeInfo, null, `closed although heart-beating was off: ${JSON.stringify(raw.closeInfo)}`);
    assert.equal(raw.heartbeats.length, 0, 'no heart-beats sent to a client that wants none');
  } finally {
    raw.close();
  }
});
