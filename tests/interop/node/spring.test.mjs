// Spring simple-broker and RabbitMQ conventions with stomp.js: a user destination arrives under
// the destination the client subscribed to; `--queue-mode broadcast` gives every subscriber of a
// /queue/ every message; RPC over `reply-to:/temp-queue/...` (replies reach the requester's
// `onUnhandledMessage`, as with RabbitMQ) and nobody else can subscribe to the reply queue.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { startBroker } from '../lib/broker.mjs';
import {
  connectStomp, subscribeWithReceipt, publishWithReceipt, receiptPromise, uniq, Inbox, waitFor,
} from '../lib/stomp.mjs';

let broker;
let broadcast;
const clients = [];
async function connect(b, name, connectHeaders = {}) {
  const c = await connectStomp(b.wsUrl, { name, connectHeaders });
  clients.push(c);
  return c;
}

before(async () => {
  broker = await startBroker();
  broadcast = await startBroker({ extraArgs: ['--queue-mode', 'broadcast'] });
});
after(async () => {
  for (const c of clients) await c.close().catch(() => {});
  if (broker) await broker.stop();
  if (broadcast) await broadcast.stop();
});

test('a user destination MESSAGE carries the destination the client subscribed to', async () => {
  const user = uniq('alice');
  const alice = await connect(broker, 'alice', { login: user });
  const { inbox } = await subscribeWithReceipt(alice.client, '/user/queue/updates');
  const pub = await connect(broker, 'pub');
  await publishWithReceipt(pub.client, { destination: `/user/${user}/queue/updates`, body: 'hi' });
  const [m] = await inbox.waitCount(1);
  assert.equal(m.body, 'hi');
  assert.equal(m.headers.destination, '/user/queue/updates');
});

test('queue mode broadcast: every subscriber of a /queue/ gets every message', async () => {
  const q = `/queue/${uniq('news')}`;
  const a = await connect(broadcast, 'bc-a');
  const b = await connect(broadcast, 'bc-b');
  const sa = await subscribeWithReceipt(a.client, q);
  const sb = await subscribeWithReceipt(b.client, q);
  const pub = await connect(broadcast, 'bc-pub');
  await publishWithReceipt(pub.client, { destination: q, body: 'one' });
  await publishWithReceipt(pub.client, { destination: q, body: 'two' });
  assert.deepEqual((await sa.inbox.waitCount(2)).map((m) => m.body), ['one', 'two']);
  assert.deepEqual((await sb.inbox.waitCount(2)).map((m) => m.body), ['one', 'two']);
});

test('request-reply over /temp-queue/: the reply reaches only the requester; the reply queue is private', async () => {
  const rpc = `/queue/${uniq('rpc')}`;
  // The service: answers each request at its reply-to.
  const service = await connect(broker, 'service');
  const requests = new Inbox('requests');
  const subReceipt = uniq('sub-rcpt');
  const subscribed = receiptPromise(service.client, subReceipt);
  service.client.subscribe(rpc, (m) => {
    requests.push(m);
    service.client.publish({
      destination: m.headers['reply-to'],
      body: `answer to ${m.body}`,
      headers: { 'correlation-id': m.headers['correlation-id'] },
    });
  }, { receipt: subReceipt });
  await subscribed;

  const requester = await connect(broker, 'requester');
  const replies = new Inbox('replies');
  requester.client.onUnhandledMessage = (m) => replies.push(m);
  const bystander = await connect(broker, 'bystander');
  const stray = new Inbox('bystander');
  bystander.client.onUnhandledMessage = (m) => stray.push(m);

  await publishWithReceipt(requester.client, {
    destination: rpc,
    body: 'q1',
    headers: { 'reply-to': '/temp-queue/rpc-replies', 'correlation-id': 'c1' },
  });
  const [req] = await requests.waitCount(1);
  const replyTo = req.headers['reply-to'];
  assert.match(replyTo, /^\/reply-queue\/[0-9a-f]{32}$/, 'reply-to is rewritten to an opaque reply queue');
  const [reply] = await replies.waitCount(1);
  assert.equal(reply.body, 'answer to q1');
  assert.equal(reply.headers.subscription, '/temp-queue/rpc-replies');
  assert.equal(reply.headers['correlation-id'], 'c1');
  assert.equal(stray.length, 0);

  // A third connection that learnt the name still cannot read the replies.
  const thief = await connect(broker, 'thief');
  thief.client.subscribe(replyTo, () => {});
  const err = await waitFor(() => thief.state.errors[0], { what: 'ERROR for the thief' });
  assert.equal(err.headers.message, 'access denied');
});
