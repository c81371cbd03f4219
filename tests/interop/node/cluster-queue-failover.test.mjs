// stomp.js (reconnectDelay) through HAProxy's WebSocket front end in front of a 3-node cluster
// (scripts/cluster.sh), for /queue destinations (issue 13 item 5): the consumer subscribes with
// client-individual ack and ACKs each message; the producer sends numbered messages with a
// receipt each (publish + watchForReceipt). The consumer is placed on a node that does not own the
// queue's partition (one partition: the one node with stomp_cluster_queue_owned_partitions 1).
// Mid-stream the consumer's node is SIGKILLed, then the owner, while sends continue.
// stomp.js reconnects through HAProxy and resubscribes in onConnect; every RECEIPT'd message
// arrives at least once (duplicates counted and printed); the killed nodes restart and rejoin.
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { REPO_ROOT } from '../lib/broker.mjs';
import {
  connectStomp, receiptPromise, publishWithReceipt, uniq, waitFor, sleep,
} from '../lib/stomp.mjs';

const MESSAGES = 90;
const clients = [];
let env = null;
let dir = null;

function script(...args) {
  return execFileSync('bash', [path.join(REPO_ROOT, 'scripts/cluster.sh'), ...args], {
    env, encoding: 'utf8', timeout: 300000, stdio: ['ignore', 'pipe', 'pipe'],
  });
}

async function metric(http, name) {
  try {
    const text = await (await fetch(`${http}/metrics`)).text();
    const line = text.split('\n').find((l) => l.startsWith(`${name} `));
    return line ? Number(line.split(' ')[1]) : null;
  } catch { return null; }
}

after(async () => {
  for (const c of clients) await c.close().catch(() => {});
  if (env) { try { script('stop'); } catch { /* already stopped */ } }
  if (dir) rmSync(dir, { recursive: true, force: true });
});

test('stomp.js queue consumer survives its node and the queue owner being killed through HAProxy; no RECEIPT\'d message is lost', { timeout: 240000 }, async () => {
  dir = mkdtempSync(path.join(tmpdir(), 'js-cluster-q-'));
  const config = path.join(dir, 'nodes.toml');
  // One queue partition: the queue's owner is the one node that owns a partition.
  writeFileSync(config, `[cluster]\ntopic = "${uniq('js-cq-topic').replace(/[^A-Za-z0-9-]/g, '-')}"\npartitions = 1\n`);
  env = {
    ...process.env,
    CLUSTER_DIR: path.join(dir, 'state'), // cluster.sh start empties its state dir
    CLUSTER_CONFIG: config,
    CLUSTER_GROUP_ID: uniq('js-cq-group').replace(/[^A-Za-z0-9-]/g, '-'),
  };
  const addrs = Object.fromEntries(script('start').split('\n').filter((l) => l.includes('='))
    .map((l) => [l.slice(0, l.indexOf('=')), l.slice(l.indexOf('=') + 1)]));
  const nodes = ['node1', 'node2', 'node3'];
  const http = (n) => addrs[`CLUSTER_${n.toUpperCase()}_HTTP`];

  let owners = [];
  await waitFor(async () => {
    const owned = await Promise.all(nodes.map((n) => metric(http(n), 'stomp_cluster_queue_owned_partitions')));
    owners = nodes.filter((_, i) => owned[i] === 1);
    return owners.length === 1;
  }, { timeout: 60000, interval: 100, what: 'one owner of the queue partition' });
  const owner = owners[0];

  const queue = `/queue/${uniq('js-cq').replace(/[^A-Za-z0-9-]/g, '-')}`;
  const bodies = new Map();
  let redelivered = 0;
  const consumer = async (name) => {
    const subscribed = [];
    const c = await connectStomp(addrs.CLUSTER_WS, {
      name,
      reconnectDelay: 200,
      onConnect: (_frame, client) => {
        const receipt = uniq('resub');
        const p = receiptPromise(client, receipt, 10000);
        p.catch(() => {});
        client.subscribe(queue, (m) => {
          bodies.set(m.body, (bodies.get(m.body) ?? 0) + 1);
          if (m.headers.redelivered === 'true') redelivered += 1;
          try { m.ack(); } catch { /* connection gone: redelivered */ }
        }, { receipt, ack: 'client-individual' });
        subscribed.push(p);
      },
    });
    clients.push(c);
    await subscribed[0];
    return c;
  };
  // The one node (but `except`) with client connections.
  const nodeWithConnections = async (except) => {
    let on = [];
    await waitFor(async () => {
      const counts = await Promise.all(nodes.map((n) => metric(http(n), 'stomp_connections')));
      on = nodes.filter((n, i) => n !== except && counts[i] > 0);
      return on.length === 1;
    }, { timeout: 10000, interval: 50, what: `one node${except ? ` besides ${except}` : ''} with a connection` });
    return on[0];
  };
  let sub = await consumer('cluster-queue-sub');
  let consumerNode = await nodeWithConnections(null);
  if (consumerNode === owner) {
    // Both kills should happen (the consumer's node, then the owner): while this connection
    // holds the owner, HAProxy's leastconn puts the next one on another node. Nothing has been
    // sent yet, so the swap loses nothing.
    const second = await consumer('cluster-queue-sub2');
    consumerNode = await nodeWithConnections(owner);
    await sub.close();
    sub = second;
  }
  const victims = [consumerNode, ...(owner !== consumerNode ? [owner] : [])];
  const survivor = nodes.find((n) => !victims.includes(n));
  const pub = await connectStomp(`${http(survivor).replace('http://', 'ws://')}/ws`, { name: 'cluster-queue-pub' });
  clients.push(pub);
  console.log(`consumer on ${consumerNode}, queue owner ${owner}, producer on ${survivor}`);

  const kills = new Map([[MESSAGES / 3, victims[0]]]);
  if (victims.length > 1) kills.set((2 * MESSAGES) / 3, victims[1]);
  const receipted = [];
  for (let i = 0; i < MESSAGES; i++) {
    if (kills.has(i)) script('kill', kills.get(i));
    const body = `m${String(i).padStart(4, '0')}`;
    try {
      await publishWithReceipt(pub.client, { destination: queue, body });
      receipted.push(body);
    } catch { /* no RECEIPT: this one may be lost */ }
    await sleep(20);
  }
  await waitFor(() => receipted.every((b) => bodies.has(b)), { timeout: 60000, interval: 50, what: 'every receipted message' })
    .catch(() => {});
  const missing = receipted.filter((b) => !bodies.has(b));
  const dups = [...bodies.entries()].filter(([, n]) => n > 1);
  console.log(`stomp.js queue failover: ${receipted.length}/${MESSAGES} receipted, ${receipted.length - missing.length} of them received, `
    + `${dups.reduce((s, [, n]) => s + n - 1, 0)} duplicates ${JSON.stringify(dups.map(([b]) => b))}, ${redelivered} redelivered, `
    + `${sub.state.connects} connects, killed ${victims}`);
  assert.deepEqual(missing, [], "no RECEIPT'd queue message is lost");
  assert.ok(receipted.length > 0, 'the producer got RECEIPTs');
  assert.ok(sub.state.connects >= 2, 'stomp.js reconnected');

  for (const v of victims) script('restart', v);
  const status = script('status');
  for (const v of victims) {
    assert.ok(status.split('\n').some((l) => l.startsWith(`${v}: running`) && l.includes('readyz=200') && l.includes('haproxy=UP')), status);
  }
});
