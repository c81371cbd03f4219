// stomp.js and the Kafka bridge: order results go through a real Kafka and reach the stomp.js
// subscribers of their order, and only those.
//
// Needs KAFKA_BOOTSTRAP (scripts/test.sh exports it after `scripts/kafka.sh start`). Without it
// the test FAILS instead of skipping, because the test command always provides Kafka. Run alone:
//   KAFKA_BOOTSTRAP=$(scripts/kafka.sh bootstrap) node --test tests/interop/node/kafka.test.mjs
//
// Records are written to Kafka through the broker itself: a stomp.js client SENDs each order
// result to /app/<topic> with a `kafka-key` header (the RECEIPT means Kafka acknowledged it).
// The bridge's consumer then reads the topic and routes each record to /topic/order.<key>;
// `message-id` (<topic>-<partition>-<offset>) and `kafka-*` headers show it came from Kafka.
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, writeFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { startBroker } from '../lib/broker.mjs';
import {
  connectStomp, subscribeWithReceipt, publishWithReceipt, uniq, waitFor, sleep,
} from '../lib/stomp.mjs';

const cleanup = [];
after(async () => {
  for (const f of cleanup.reverse()) await f().catch(() => {});
});

test('stomp.js subscribers receive exactly their own order results from Kafka', async () => {
  const bootstrap = process.env.KAFKA_BOOTSTRAP;
  assert.ok(
    bootstrap,
    'KAFKA_BOOTSTRAP is not set: this test needs a real Kafka. scripts/test.sh starts one; alone, run '
      + '`scripts/kafka.sh start` and `export KAFKA_BOOTSTRAP=$(scripts/kafka.sh bootstrap)`.',
  );
  const topic = uniq('order-results-js');
  const dir = mkdtempSync(path.join(tmpdir(), 'stomp-kafka-js-'));
  cleanup.push(async () => rmSync(dir, { recursive: true, force: true }));
  // The CLI has no auto_offset_reset flag: a fresh group must read its new topic from the start,
  // and notice the topic (created by the first SEND) within a second.
  const config = path.join(dir, 'broker.toml');
  writeFileSync(config, [
    '[kafka]',
    'auto_offset_reset = "earliest"',
    'stats_interval = 1',
    '[kafka.client]',
    '"topic.metadata.refresh.interval.ms" = "1000"',
    '',
  ].join('\n'));
  const broker = await startBroker({
    extraArgs: [
      '--config', config,
      '--kafka-brokers', bootstrap,
      '--kafka-group-id', uniq('interop-js'),
      '--route', `${topic}=/topic/order.{key}`,
    ],
  });
  cleanup.push(() => broker.stop());

  // Three subscribers following two orders each; two more orders nobody follows.
  const follows = [['A-1', 'A-2'], ['B-1', 'B-2'], ['C-1', 'C-2']];
  const orders = [...follows.flat(), 'X-1', 'X-2'];
  const subscribers = [];
  for (const [i, ids] of follows.entries()) {
    const c = await connectStomp(broker.wsUrl, { name: `sub${i}` });
    cleanup.push(() => c.close());
    const inboxes = {};
    for (const id of ids) {
      inboxes[id] = (await subscribeWithReceipt(c.client, `/topic/order.${id}`)).inbox;
    }
    subscribers.push({ ids, inboxes });
  }

  const producer = await connectStomp(broker.wsUrl, { name: 'producer' });
  cleanup.push(() => producer.close());
  for (const id of orders) {
    await publishWithReceipt(producer.client, {
      destination: `/app/${topic}`,
      body: JSON.stringify({ orderId: id, status: 'FILLED' }),
      headers: { 'kafka-key': id, 'content-type': 'application/json', 'trace-id': `t-${id}` },
    }).catch((e) => {
      throw new Error(`SEND to /app/${topic} (${id}): ${e.message}; ERROR frames: `
        + `${JSON.stringify(producer.state.errors.map((f) => f.headers))}\n${broker.logs()}`);
    });
  }

  const offsets = new Set();
  for (const { inboxes } of subscribers) {
    for (const [id, inbox] of Object.entries(inboxes)) {
      const [m] = await inbox.waitCount(1, 30000).catch((e) => {
        throw new Error(`${e.message}\n--- broker output ---\n${broker.logs()}`);
      });
      assert.deepEqual(JSON.parse(m.body), { orderId: id, status: 'FILLED' });
      const h = m.headers;
      assert.equal(h.destination, `/topic/order.${id}`);
      assert.equal(h['content-type'], 'application/json');
      assert.equal(h['kafka-topic'], topic, `kafka-topic (headers ${JSON.stringify(h)})`);
      assert.match(h['kafka-partition'], /^\d+$/);
      assert.match(h['kafka-offset'], /^\d+$/);
      assert.match(h['kafka-timestamp'] ?? '', /^\d+$/);
      assert.equal(h['message-id'], `${topic}-${h['kafka-partition']}-${h['kafka-offset']}`);
      assert.equal(h.replayed, undefined, 'subscribed before the record: a live delivery');
      offsets.add(h['message-id']);
    }
  }
  assert.equal(offsets.size, follows.flat().length, 'one distinct Kafka record per order');

  // Nothing foreign, nothing twice: once the broker has routed all 8 records, every inbox still
  // holds exactly its one message.
  const metric = async () => {
    const text = await (await fetch(`${broker.httpUrl}/metrics`)).text();
    const line = text.split('\n').find((l) => l.startsWith('kafka_bridge_routed_total'));
    return line ? Number(line.trim().split(/\s+/).pop()) : 0;
  };
  await waitFor(async () => (await metric()) >= orders.length, { timeout: 15000, what: 'all records routed' });
  await sleep(300);
  for (const { inboxes } of subscribers) {
    for (const [id, inbox] of Object.entries(inboxes)) {
      assert.equal(inbox.length, 1, `messages for ${id}: ${JSON.stringify(inbox.items.map((m) => m.headers))}`);
    }
  }
  assert.equal(producer.state.errors.length, 0);
});
