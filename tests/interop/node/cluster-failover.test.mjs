// stomp.js (reconnectDelay) through HAProxy's WebSocket front end in front of a 3-node cluster
// (scripts/cluster.sh): the subscriber's node is SIGKILLed; stomp.js reconnects through HAProxy,
// resubscribes in onConnect and keeps receiving; every Kafka-routed record (SENT to
// /app/<topic>, routed back to /topic/order.<key>) arrives at least once (the retained replay on
// resubscribe fills the gap; duplicates counted and printed); the node restarts and rejoins.
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { REPO_ROOT, startBroker } from '../lib/broker.mjs';
import {
  connectStomp, receiptPromise, publishWithReceipt, uniq, waitFor, sleep,
} from '../lib/stomp.mjs';

const RECORDS = 150;
const clients = [];
let env = null;

function script(...args) {
  return execFileSync('bash', [path.join(REPO_ROOT, 'scripts/cluster.sh'), ...args], {
    env, encoding: 'utf8', timeout: 300000, stdio: ['ignore', 'pipe', 'pipe'],
  });
}

async function connections(http) {
  try {
    const text = await (await fetch(`${http}/metrics`)).text();
    const line = text.split('\n').find((l) => l.startsWith('stomp_connections '));
    return line ? Number(line.split(' ')[1]) : 0;
  } catch { return 0; }
}

after(async () => {
  for (const c of clients) await c.close().catch(() => {});
  if (env) { try { script('stop'); } catch { /* already stopped */ } }
});

test('stomp.js reconnects through HAProxy across a node kill; no Kafka-routed record is lost', { timeout: 180000 }, async () => {
  const kafka = execFileSync('bash', [path.join(REPO_ROOT, 'scripts/kafka.sh'), 'start'], { encoding: 'utf8' })
    .trim().split('\n').pop();
  const topic = uniq('js-cluster-orders').replace(/[^A-Za-z0-9-]/g, '-');
  // Create the topic (Kafka auto-creates it on the first record) before the nodes route it.
  const seed = await startBroker({ extraArgs: ['--kafka-brokers', kafka] });
  try {
    const c = await connectStomp(seed.wsUrl, { name: 'seed' });
    await publishWithReceipt(c.client, { destination: `/app/${topic}`, body: 'seed', headers: { 'kafka-key': 'seed' } });
    await c.close();
  } finally { await seed.stop(); }

  env = {
    ...process.env,
    CLUSTER_DIR: mkdtempSync(path.join(tmpdir(), 'js-cluster-')),
    CLUSTER_ROUTES: `${topic}=/topic/order.{key}`,
    CLUSTER_GROUP_ID: uniq('js-cluster-group').replace(/[^A-Za-z0-9-]/g, '-'),
    CLUSTER_TOPIC: uniq('js-cluster-topic').replace(/[^A-Za-z0-9-]/g, '-'),
  };
  const addrs = Object.fromEntries(script('start').split('\n').filter((l) => l.includes('='))
    .map((l) => [l.slice(0, l.indexOf('=')), l.slice(l.indexOf('=') + 1)]));

  const bodies = new Map();
  const subscribed = [];
  const sub = await connectStomp(addrs.CLUSTER_WS, {
    name: 'cluster-sub',
    reconnectDelay: 200,
    onConnect: (_frame, client) => {
      const receipt = uniq('resub');
      const p = receiptPromise(client, receipt, 10000);
      p.catch(() => {});
      client.subscribe('/topic/order.*', (m) => bodies.set(m.body, (bodies.get(m.body) ?? 0) + 1), { receipt });
      subscribed.push(p);
    },
  });
  clients.push(sub);
  await subscribed[0];

  const nodes = ['node1', 'node2', 'node3'];
  let mine = [];
  await waitFor(async () => {
    const counts = await Promise.all(nodes.map((n) => connections(addrs[`CLUSTER_${n.toUpperCase()}_HTTP`])));
    mine = nodes.filter((_, i) => counts[i] > 0);
    return mine.length === 1;
  }, { timeout: 10000, what: "the subscriber's node" });
  const victim = mine[0];
  const other = nodes.find((n) => n !== victim);
  const pubUrl = `${addrs[`CLUSTER_${other.toUpperCase()}_HTTP`].replace('http://', 'ws://')}/ws`;
  const pub = await connectStomp(pubUrl, { name: 'cluster-pub' });
  clients.push(pub);

  for (let i = 0; i < RECORDS; i++) {
    if (i === RECORDS / 3) script('kill', victim);
    pub.client.publish({ destination: `/app/${topic}`, body: `r${i}`, headers: { 'kafka-key': `k${String(i).padStart(4, '0')}` } });
    await sleep(20);
  }
  const want = Array.from({ length: RECORDS }, (_, i) => `r${i}`);
  await waitFor(() => want.every((b) => bodies.has(b)), { timeout: 60000, what: 'every record' })
    .catch(() => {});
  const missing = want.filter((b) => !bodies.has(b));
  const dups = [...bodies.values()].reduce((s, n) => s + n - 1, 0);
  console.log(`stomp.js failover: ${RECORDS - missing.length}/${RECORDS} records, ${dups} duplicates, ${sub.state.connects} connects`);
  assert.deepEqual(missing, [], 'no Kafka-routed record is lost');
  assert.ok(sub.state.connects >= 2, 'stomp.js reconnected');

  script('restart', victim);
  const status = script('status');
  assert.ok(status.split('\n').some((l) => l.startsWith(`${victim}: running`) && l.includes('readyz=200') && l.includes('haproxy=UP')), status);
});
