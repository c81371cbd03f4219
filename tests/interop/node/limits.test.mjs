// Size limits as stomp.js meets them: a body of exactly limits.max_body_bytes (1 MiB by
// default) fits, because the frame limit leaves room for the headers; one byte more is refused.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { startBroker } from '../lib/broker.mjs';
import {
  connectStomp, subscribeWithReceipt, publishWithReceipt, uniq, waitFor,
} from '../lib/stomp.mjs';

const MAX_BODY = 1024 * 1024; // limits.max_body_bytes default

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

test('stomp.js: a text body of exactly max_body_bytes (1 MiB) is accepted and delivered whole', async () => {
  const sub = await connect('big-sub');
  const pub = await connect('big-pub');
  const dest = `/topic/${uniq('big')}`;
  const { inbox } = await subscribeWithReceipt(sub.client, dest);
  const body = 'x'.repeat(MAX_BODY - 3) + 'end';
  await publishWithReceipt(pub.client, { destination: dest, body });
  const [m] = await inbox.waitCount(1);
  assert.equal(m.body.length, MAX_BODY);
  assert.ok(m.body.endsWith('end'));
  assert.equal(pub.state.errors.length, 0, JSON.stringify(pub.state.errors.map((e) => e.headers)));
});

test('stomp.js: a binary body of exactly max_body_bytes is accepted and delivered whole', async () => {
  const sub = await connect('bin-sub');
  const pub = await connect('bin-pub');
  const dest = `/topic/${uniq('bigbin')}`;
  const { inbox } = await subscribeWithReceipt(sub.client, dest);
  const binaryBody = new Uint8Array(MAX_BODY);
  for (let i = 0; i < binaryBody.length; i++) binaryBody[i] = i % 251;
  await publishWithReceipt(pub.client, {
    destination: dest, binaryBody, headers: { 'content-type': 'application/octet-stream' },
  });
  const [m] = await inbox.waitCount(1);
  assert.equal(m.binaryBody.length, MAX_BODY);
  assert.equal(m.binaryBody[MAX_BODY - 1], (MAX_BODY - 1) % 251);
});

test('stomp.js: one byte over max_body_bytes is still refused with ERROR "body too large"', async () => {
  const pub = await connect('over-pub');
  pub.client.publish({ destination: `/topic/${uniq('over')}`, body: 'x'.repeat(MAX_BODY + 1) });
  await waitFor(() => pub.state.errors.length > 0, { timeout: 5000, what: 'ERROR' });
  assert.equal(pub.state.errors[0].headers.message, 'body too large');
});
