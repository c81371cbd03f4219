// Heart-beating. The broker follows the client's request within heartbeat.min_ms..max_ms;
// the shared broker here allows 200 ms (--heart-beat-min-ms 200), the stomp.js tests at
// the end use the default 1000 ms minimum.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { startBroker } from '../lib/broker.mjs';
import {
  connectStomp, subscribeWithReceipt, publishWithReceipt, uniq, sleep, RawStompWs, withTimeout, waitFor,
} from '../lib/stomp.mjs';

let broker;
const clients = [];

before(async () => {
  broker = await startBroker({ heartBeat: '200,200', extraArgs: ['--heart-beat-min-ms', '200'] });
});
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
  assert.equal(c.connected.headers['heart-beat'], '200,200', 'CONNECTED heart-beat follows the 200 ms request');
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
    // interval × tolerance + grace (defaults 2.0 and 5000 ms, the grace capped at half the
    // interval: ≈ 0.5 s). Allow up to 10 s.
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

// stomp.js asking for 1 s heart-beats, against a broker with the default settings
// (heartbeat.server 10000,10000, min_ms 1000): it gets 1 s, not the old 10 s floor.
test('stomp.js asking for 1 s heart-beats gets 1 s, and the broker closes it within 3 s once it goes silent', async () => {
  const dflt = await startBroker();
  try {
    const c = await connectStomp(dflt.wsUrl, {
      heartbeatIncoming: 1000,
      heartbeatOutgoing: 1000,
      name: 'hb-1s',
    });
    clients.push(c);
    assert.equal(c.connected.headers['heart-beat'], '1000,1000', 'CONNECTED answers the 1 s request');
    // Nearly three intervals with traffic only from heart-beats: both sides keep it up.
    await sleep(2800);
    assert.equal(c.state.closes.length, 0, `closed while beating: ${JSON.stringify(c.state.closes)}`);
    assert.equal(c.state.heartbeatsLost, 0, 'stomp.js never declared the broker dead');
    assert.ok(c.state.heartbeatsReceived >= 2, `broker beats at 1 s (not 10 s): ${c.state.heartbeatsReceived} in 2.8 s`);
    // Silence the client: drop whatever stomp.js writes (its PINGs) from now on.
    const ws = c.state.ws;
    ws.send = () => {};
    const silentSince = Date.now();
    await waitFor(() => c.state.closes.length > 0, { timeout: 8000, what: 'the broker to close the silent client' });
    const elapsed = c.state.closes[0].at - silentSince;
    assert.ok(elapsed < 3000, `closed ${elapsed} ms after the client went silent (want < 3000)`);
    assert.ok(elapsed >= 1000, `closed too early: ${elapsed} ms`);
    assert.equal(c.state.errors[0]?.headers.message, 'heart-beat timeout',
      `ERROR before the close: ${JSON.stringify(c.state.errors.map((e) => e.headers))}`);
  } finally {
    await dflt.stop();
  }
});

test('stomp.js asking for 1 s heart-beats notices a frozen broker within about 3 s', async () => {
  const dflt = await startBroker();
  try {
    const c = await connectStomp(dflt.wsUrl, {
      heartbeatIncoming: 1000,
      heartbeatOutgoing: 1000,
      name: 'hb-frozen',
    });
    clients.push(c);
    await waitFor(() => c.state.heartbeatsReceived >= 1, { timeout: 3000, what: 'a first broker heart-beat' });
    // Freeze the broker: no more heart-beats. stomp.js checks every 1 s for > 2 s of silence
    // (before: the broker answered 10000 and stomp.js waited 20 s).
    dflt.proc.kill('SIGSTOP');
    const frozenAt = Date.now();
    try {
      await waitFor(() => c.state.heartbeatsLost > 0, { timeout: 8000, what: 'stomp.js to declare the broker dead' });
    } finally {
      dflt.proc.kill('SIGCONT');
    }
    const elapsed = Date.now() - frozenAt;
    assert.ok(elapsed < 4000, `stomp.js noticed after ${elapsed} ms (want about 3 s at most)`);
  } finally {
    await dflt.stop();
  }
});
