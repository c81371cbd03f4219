// Protocol-level behaviour seen by raw WebSocket clients: receipts, ERROR-then-close,
// version negotiation, graceful shutdown.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { startBroker } from '../lib/broker.mjs';
import { RawStompWs, connectStomp, withTimeout, waitFor } from '../lib/stomp.mjs';

let broker;
before(async () => { broker = await startBroker(); });
after(async () => { if (broker) await broker.stop(); });

async function openConnected() {
  const raw = await RawStompWs.open(broker.wsUrl);
  const f = await raw.connect();
  assert.equal(f.command, 'CONNECTED');
  return raw;
}

test('DISCONNECT with receipt: RECEIPT, then the broker closes the connection', async () => {
  const raw = await openConnected();
  try {
    raw.send('DISCONNECT', { receipt: 'bye-1' });
    const r = await raw.frames.waitMatch((x) => x.command !== 'CONNECTED');
    assert.equal(r.command, 'RECEIPT');
    assert.equal(r.headers['receipt-id'], 'bye-1');
    await withTimeout(raw.closed, 5000, 'close after DISCONNECT');
  } finally {
    raw.close();
  }
});

test('unknown command → ERROR (with message, receipt-id) then close', async () => {
  const raw = await openConnected();
  try {
    raw.send('FROBNICATE', { receipt: 'bad-1' });
    const e = await raw.frames.waitMatch((x) => x.command !== 'CONNECTED');
    assert.equal(e.command, 'ERROR', `got ${e.command} ${JSON.stringify(e.headers)}`);
    assert.ok(e.headers.message, 'ERROR has a message header');
    assert.equal(e.headers['receipt-id'], 'bad-1', 'ERROR carries receipt-id of the failing frame');
    await withTimeout(raw.closed, 5000, 'close after ERROR');
  } finally {
    raw.close();
  }
});

test('SEND before CONNECT → ERROR then close', async () => {
  const raw = await RawStompWs.open(broker.wsUrl);
  try {
    raw.send('SEND', { destination: '/topic/x' }, 'too early');
    const e = await raw.frames.waitCount(1);
    assert.equal(e[0].command, 'ERROR');
    await withTimeout(raw.closed, 5000, 'close after ERROR');
  } finally {
    raw.close();
  }
});

test('CONNECT with no common version → ERROR with a version header, then close', async () => {
  const raw = await RawStompWs.open(broker.wsUrl);
  try {
    raw.send('CONNECT', { 'accept-version': '2.0,9.9', host: '/' });
    const [e] = await raw.frames.waitCount(1);
    assert.equal(e.command, 'ERROR', `got ${e.command} ${JSON.stringify(e.headers)}`);
    assert.ok(e.headers.version && e.headers.version.split(',').includes('1.2'), `version header lists supported versions: ${e.headers.version}`);
    await withTimeout(raw.closed, 5000, 'close after ERROR');
  } finally {
    raw.close();
  }
});

test('STOMP command works like CONNECT', async () => {
  const raw = await RawStompWs.open(broker.wsUrl);
  try {
    raw.send('STOMP', { 'accept-version': '1.2', host: '/' });
    const [f] = await raw.frames.waitCount(1);
    assert.equal(f.command, 'CONNECTED');
    assert.equal(f.headers.version, '1.2');
  } finally {
    raw.close();
  }
});

test('several frames in one WebSocket message, and one frame split over two messages', async () => {
  const raw = await openConnected();
  try {
    raw.sendRaw('SUBSCRIBE\nid:a\ndestination:/topic/multi\nreceipt:r-a\n\n\0SUBSCRIBE\nid:b\ndestination:/topic/multi2\nreceipt:r-b\n\n\0');
    await raw.frames.waitMatch((x) => x.headers['receipt-id'] === 'r-b');
    assert.ok(raw.frames.items.find((x) => x.headers['receipt-id'] === 'r-a'));
    raw.sendRaw('SEND\ndestination:/topic/mu');
    raw.sendRaw('lti\nreceipt:r-c\n\nsplit body\0');
    const m = await raw.frames.waitMatch((x) => x.command === 'MESSAGE' || x.command === 'ERROR');
    assert.equal(m.command, 'MESSAGE', `${m.command} ${JSON.stringify(m.headers)} ${m.body}`);
    assert.equal(m.body.toString(), 'split body');
  } finally {
    raw.close();
  }
});

// Keep last: stops the shared broker.
test('SIGTERM: graceful shutdown, connected clients are closed, exit code 0', async () => {
  const c = await connectStomp(broker.wsUrl, { name: 'shutdown' });
  const b = broker;
  broker = null;
  const res = await b.stop();
  assert.deepEqual({ code: res.code, signal: res.signal, killed: res.killed }, { code: 0, signal: null, killed: false },
    `broker exit after SIGTERM\n--- broker output ---\n${b.logs()}`);
  await waitFor(() => c.state.closes.length >= 1, { timeout: 5000, what: 'client WebSocket closed by shutdown' });
  await c.close().catch(() => {});
});
