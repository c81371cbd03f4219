// Transactions with stomp.js: client.begin() / tx.commit() / tx.abort(), for SEND and ACK.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { startBroker } from '../lib/broker.mjs';
import {
  connectStomp, subscribeWithReceipt, publishWithReceipt, uniq, RawStompWs,
} from '../lib/stomp.mjs';

let broker;
const clients = [];
async function connect(name) {
  const c = await connectStomp(broker.wsUrl, { name });
  clients.push(c);
  return c;
}

before(async () => { broker = await startBroker(); });
after(async () => {
  for (const c of clients) await c.close().catch(() => {});
  if (broker) await broker.stop();
});

test('SENDs in a transaction are delivered only on COMMIT, in order', async () => {
  const sub = await connect('tx-sub');
  const pub = await connect('tx-pub');
  const dest = `/topic/${uniq('tx')}`;
  const { inbox } = await subscribeWithReceipt(sub.client, dest);
  const tx = pub.client.begin();
  assert.ok(tx.id, 'transaction id');
  pub.client.publish({ destination: dest, body: 't1', headers: { transaction: tx.id } });
  pub.client.publish({ destination: dest, body: 't2', headers: { transaction: tx.id } });
  // Barrier: a non-transactional message sent after them arrives while t1/t2 are held.
  await publishWithReceipt(pub.client, { destination: dest, body: 'outside' });
  await inbox.waitMatch((m) => m.body === 'outside');
  assert.deepEqual(inbox.items.map((m) => m.body), ['outside'], 'nothing from the open transaction yet');
  tx.commit();
  await inbox.waitCount(3);
  assert.deepEqual(inbox.items.map((m) => m.body), ['outside', 't1', 't2']);
  for (const m of inbox.items) assert.equal(m.headers.transaction, undefined, 'transaction header not on MESSAGE');
});

test('ABORT discards the transaction\'s SENDs', async () => {
  const sub = await connect('abort-sub');
  const pub = await connect('abort-pub');
  const dest = `/queue/${uniq('abort')}`;
  const { inbox } = await subscribeWithReceipt(sub.client, dest);
  const tx = pub.client.begin();
  pub.client.publish({ destination: dest, body: 'discarded-1', headers: { transaction: tx.id } });
  pub.client.publish({ destination: dest, body: 'discarded-2', headers: { transaction: tx.id } });
  tx.abort();
  await publishWithReceipt(pub.client, { destination: dest, body: 'after-abort' });
  await inbox.waitMatch((m) => m.body === 'after-abort');
  assert.deepEqual(inbox.items.map((m) => m.body), ['after-abort']);
});

test('BEGIN / COMMIT / ABORT with receipt headers get RECEIPTs (raw frames over WebSocket)', async () => {
  const raw = await RawStompWs.open(broker.wsUrl);
  try {
    const connected = await raw.connect();
    assert.equal(connected.command, 'CONNECTED');
    const dest = `/topic/${uniq('txraw')}`;
    const expectReceipt = async (id) => {
      const f = await raw.frames.waitMatch((x) => x.command !== 'MESSAGE' && (x.headers['receipt-id'] === id || x.command === 'ERROR'), 5000, `RECEIPT ${id}`);
      assert.equal(f.command, 'RECEIPT', `expected RECEIPT ${id}, got ${f.command} ${JSON.stringify(f.headers)} ${f.body}`);
    };
    raw.send('SUBSCRIBE', { id: 's1', destination: dest, receipt: 'r-sub' });
    await expectReceipt('r-sub');
    raw.send('BEGIN', { transaction: 'tx1', receipt: 'r-begin' });
    await expectReceipt('r-begin');
    raw.send('SEND', { destination: dest, transaction: 'tx1', receipt: 'r-send1' }, 'committed');
    await expectReceipt('r-send1');
    raw.send('COMMIT', { transaction: 'tx1', receipt: 'r-commit' });
    await expectReceipt('r-commit');
    const m = await raw.frames.waitMatch((x) => x.command === 'MESSAGE', 5000, 'MESSAGE after COMMIT');
    assert.equal(m.body.toString(), 'committed');
    raw.send('BEGIN', { transaction: 'tx2', receipt: 'r-begin2' });
    await expectReceipt('r-begin2');
    raw.send('SEND', { destination: dest, transaction: 'tx2' }, 'aborted');
    raw.send('ABORT', { transaction: 'tx2', receipt: 'r-abort' });
    await expectReceipt('r-abort');
    raw.send('SEND', { destination: dest, receipt: 'r-send3' }, 'plain');
    await expectReceipt('r-send3');
    await raw.frames.waitMatch((x) => x.command === 'MESSAGE' && x.body.toString() === 'plain');
    assert.deepEqual(raw.frames.items.filter((x) => x.command === 'MESSAGE').map((x) => x.body.toString()), ['committed', 'plain']);
  } finally {
    raw.close();
  }
});

test('ACK inside an aborted transaction is discarded: the message is redelivered after disconnect', async () => {
  const a = await connect('txack-a');
  const q = `/queue/${uniq('txack')}`;
  const sa = await subscribeWithReceipt(a.client, q, { ack: 'client-individual' });
  await publishWithReceipt(a.client, { destination: q, body: 'm1' });
  const [m] = await sa.inbox.waitCount(1);
  const tx = a.client.begin();
  m.ack({ transaction: tx.id });
  tx.abort();
  // Make sure ABORT was processed before disconnecting.
  await publishWithReceipt(a.client, { destination: `/topic/${uniq('noop')}`, body: 'barrier' });
  await a.close();
  const b = await connect('txack-b');
  const sb = await subscribeWithReceipt(b.client, q);
  const [r] = await sb.inbox.waitCount(1);
  assert.equal(r.body, 'm1');
  assert.equal(r.headers.redelivered, 'true');
});

test('ACK inside a committed transaction takes effect', async () => {
  const a = await connect('txack2-a');
  const q = `/queue/${uniq('txack2')}`;
  const sa = await subscribeWithReceipt(a.client, q, { ack: 'client-individual' });
  await publishWithReceipt(a.client, { destination: q, body: 'm1' });
  const [m] = await sa.inbox.waitCount(1);
  const tx = a.client.begin();
  m.ack({ transaction: tx.id });
  tx.commit();
  await publishWithReceipt(a.client, { destination: `/topic/${uniq('noop')}`, body: 'barrier' });
  await a.close();
  const b = await connect('txack2-b');
  const sb = await subscribeWithReceipt(b.client, q);
  await publishWithReceipt(b.client, { destination: q, body: 'm2' });
  await sb.inbox.waitMatch((x) => x.body === 'm2');
  assert.deepEqual(sb.inbox.items.map((x) => x.body), ['m2'], 'acked m1 not redelivered');
});
