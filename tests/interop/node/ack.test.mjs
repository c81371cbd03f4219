// Acknowledgement modes on /queue/ destinations with stomp.js: client (cumulative),
// client-individual, NACK → redelivery to another consumer, unacked-at-disconnect → redelivery.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { startBroker } from '../lib/broker.mjs';
import {
  connectStomp, subscribeWithReceipt, publishWithReceipt, receiptPromise, uniq,
} from '../lib/stomp.mjs';

let broker;
const clients = [];
async function connect(name) {
  const c = await connectStomp(broker.wsUrl, { name });
  clients.push(c);
  return c;
}
async function ackWithReceipt(c, message, method = 'ack', headers = {}) {
  const receipt = uniq(`${method}-rcpt`);
  const got = receiptPromise(c.client, receipt);
  message[method]({ ...headers, receipt });
  await got;
}
async function publishAll(c, destination, bodies) {
  for (const body of bodies.slice(0, -1)) c.client.publish({ destination, body });
  await publishWithReceipt(c.client, { destination, body: bodies[bodies.length - 1] });
}

before(async () => { broker = await startBroker(); });
after(async () => {
  for (const c of clients) await c.close().catch(() => {});
  if (broker) await broker.stop();
});

test('ack:client MESSAGE frames carry an ack header (1.2)', async () => {
  const c = await connect('ackhdr');
  const q = `/queue/${uniq('ackhdr')}`;
  const { inbox } = await subscribeWithReceipt(c.client, q, { ack: 'client' });
  await publishWithReceipt(c.client, { destination: q, body: 'x' });
  const [m] = await inbox.waitCount(1);
  assert.ok(m.headers.ack, `MESSAGE has an ack header: ${JSON.stringify(m.headers)}`);
  await ackWithReceipt(c, m);
});

test('ack:client is cumulative; unacked messages are redelivered (redelivered:true, same message-id) after disconnect', async () => {
  const pub = await connect('cum-pub');
  const a = await connect('cum-a');
  const q = `/queue/${uniq('cumulative')}`;
  const sa = await subscribeWithReceipt(a.client, q, { ack: 'client' });
  await publishAll(pub, q, ['m1', 'm2', 'm3']);
  const got = await sa.inbox.waitCount(3);
  assert.deepEqual(got.map((m) => m.body), ['m1', 'm2', 'm3']);
  // ACK of m2 acknowledges m1 and m2; m3 stays unacked.
  await ackWithReceipt(a, got[1]);
  const m3id = got[2].headers['message-id'];
  await a.close();

  const b = await connect('cum-b');
  const sb = await subscribeWithReceipt(b.client, q, { ack: 'auto' });
  const [r] = await sb.inbox.waitCount(1);
  assert.equal(r.body, 'm3', 'the unacked message is redelivered');
  assert.equal(r.headers.redelivered, 'true', `redelivered header: ${JSON.stringify(r.headers)}`);
  assert.equal(r.headers['message-id'], m3id, 'message-id kept on redelivery');
  // Sentinel: m1/m2 must not come back before it.
  await publishWithReceipt(pub.client, { destination: q, body: 'm4' });
  await sb.inbox.waitMatch((m) => m.body === 'm4');
  assert.deepEqual(sb.inbox.items.map((m) => m.body), ['m3', 'm4'], 'acked m1, m2 not redelivered');
  assert.equal(sb.inbox.items[1].headers.redelivered, undefined, 'fresh message not marked redelivered');
});

test('ack:client-individual acks one message; NACK redelivers to another consumer with redelivered:true', async () => {
  const pub = await connect('ind-pub');
  const a = await connect('ind-a');
  const q = `/queue/${uniq('individual')}`;
  const sa = await subscribeWithReceipt(a.client, q, { ack: 'client-individual' });
  await publishAll(pub, q, ['m1', 'm2', 'm3']);
  const got = await sa.inbox.waitCount(3);
  assert.deepEqual(got.map((m) => m.body), ['m1', 'm2', 'm3']);

  // Second consumer joins; then a NACKs m2 → it must go to b.
  const b = await connect('ind-b');
  const sb = await subscribeWithReceipt(b.client, q, { ack: 'client-individual' });
  const m2id = got[1].headers['message-id'];
  await ackWithReceipt(a, got[1], 'nack');
  const { waitFor } = await import('../lib/stomp.mjs');
  await waitFor(() => sb.inbox.length >= 1 || sa.inbox.length > 3, { what: 'the NACKed m2 to be redelivered (to a or b)' });
  assert.equal(sa.inbox.length, 3,
    `NACKed m2 must go to the other consumer b, but was redelivered to the NACKing consumer a: ${JSON.stringify(sa.inbox.items.slice(3).map((m) => m.headers))}`);
  const [r] = await sb.inbox.waitCount(1);
  assert.equal(r.body, 'm2', 'NACKed message redelivered to the other consumer');
  assert.equal(r.headers.redelivered, 'true', `redelivered header: ${JSON.stringify(r.headers)}`);
  assert.equal(r.headers['message-id'], m2id, 'message-id kept');
  await ackWithReceipt(b, r);

  // a acks m3 only (individually: m1 stays unacked).
  await ackWithReceipt(a, got[2]);
  await a.close();
  // m1 (unacked at disconnect) comes back to b; m3 (acked) does not.
  const [, r1] = await sb.inbox.waitCount(2);
  assert.equal(r1.body, 'm1', 'unacked m1 redelivered after a disconnected');
  assert.equal(r1.headers.redelivered, 'true');
  await ackWithReceipt(b, r1);
  await publishWithReceipt(pub.client, { destination: q, body: 'm4' });
  const m4 = await sb.inbox.waitMatch((m) => m.body === 'm4');
  await ackWithReceipt(b, m4);
  assert.deepEqual(sb.inbox.items.map((m) => m.body), ['m2', 'm1', 'm4'], 'individually acked m3 not redelivered');
  assert.equal(sa.inbox.length, 3, 'a got nothing more');
});

test('ack:client-individual: ACK of a later message does not ack earlier ones', async () => {
  const a = await connect('ind2-a');
  const q = `/queue/${uniq('individual2')}`;
  const sa = await subscribeWithReceipt(a.client, q, { ack: 'client-individual' });
  await publishAll(a, q, ['m1', 'm2']);
  const got = await sa.inbox.waitCount(2);
  await ackWithReceipt(a, got[1]); // ack m2 only
  await a.close();
  const b = await connect('ind2-b');
  const sb = await subscribeWithReceipt(b.client, q);
  const [r] = await sb.inbox.waitCount(1);
  assert.equal(r.body, 'm1');
  assert.equal(r.headers.redelivered, 'true');
  await publishWithReceipt(b.client, { destination: q, body: 'm3' });
  await sb.inbox.waitMatch((m) => m.body === 'm3');
  assert.deepEqual(sb.inbox.items.map((m) => m.body), ['m1', 'm3']);
});
