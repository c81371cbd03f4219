"""stomp.py over TCP through HAProxy in front of a 3-node cluster (scripts/cluster.sh), for
/queue destinations (issue 13 item 5): a consumer SUBSCRIBEs to /queue/<unique> through HAProxy
with client-individual ack and ACKs every message it processes; a producer SENDs numbered
messages with a receipt each. The consumer is placed on a node that does not own the queue's
partition (one queue partition, so exactly one node reports stomp_cluster_queue_owned_partitions
1). Mid-stream the node the consumer is on is SIGKILLed, and then the owner, while sends
continue. The consumer reconnects through HAProxy and resubscribes, as stomp.py users do. Every
message whose RECEIPT the producer got arrives at least once (at-least-once: duplicates are
counted and printed, not hidden); the killed nodes restart and rejoin (/readyz 200, HAProxy
UP)."""
import os
import shutil
import subprocess
import tempfile
import threading
import time
import urllib.request
from collections import Counter

import stomp

from conftest import REPO_ROOT
from test_cluster_failover import connections, script
from test_stomp_py import uniq

MESSAGES = 90


def metric(http, name):
    try:
        with urllib.request.urlopen(f"{http}/metrics", timeout=2) as r:
            for line in r.read().decode().splitlines():
                if line.startswith(name + " "):
                    return float(line.split()[1])
    except OSError:
        return None
    return None


def node_with_connections(nodes, except_node=None):
    """The one node (but except_node) with client connections, waiting up to 10 s for it."""
    deadline = time.monotonic() + 10
    while True:
        on = [n for n, h in nodes.items() if n != except_node and connections(h) > 0]
        if len(on) == 1 or time.monotonic() > deadline:
            assert len(on) == 1, f"nodes (besides {except_node}) with a connection: {on}"
            return on[0]
        time.sleep(0.05)


class QueueConsumer(stomp.ConnectionListener):
    def __init__(self, host, port, queue):
        self.cond = threading.Condition()
        self.queue = queue
        self.bodies = Counter()
        self.redelivered = 0
        self.reconnects = 0
        self.closing = False
        self.conn = stomp.Connection12([(host, port)], heartbeats=(0, 0),
                                       reconnect_attempts_max=1)
        self.conn.set_listener("", self)
        self.connect()

    def connect(self):
        deadline = time.monotonic() + 30
        while True:
            try:
                self.conn.connect(wait=True)
                self.conn.subscribe(self.queue, id="q", ack="client-individual")
                return
            except Exception:  # noqa: BLE001 - HAProxy may still pick a dead node
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)

    def on_message(self, frame):
        with self.cond:
            self.bodies[frame.body] += 1
            if frame.headers.get("redelivered") == "true":
                self.redelivered += 1
            self.cond.notify_all()
        try:
            self.conn.ack(frame.headers["ack"])
        except Exception:  # noqa: BLE001 - the connection may die under us; redelivered then
            pass

    def on_disconnected(self):
        # Reconnect through HAProxy and resubscribe (off stomp.py's receiver thread).
        if self.closing:
            return
        self.reconnects += 1
        threading.Thread(target=self.connect, daemon=True).start()


class Producer(stomp.ConnectionListener):
    def __init__(self, host, port):
        self.cond = threading.Condition()
        self.receipts = set()
        self.conn = stomp.Connection12([(host, port)], heartbeats=(0, 0))
        self.conn.set_listener("", self)
        self.conn.connect(wait=True)

    def on_receipt(self, frame):
        with self.cond:
            self.receipts.add(frame.headers.get("receipt-id"))
            self.cond.notify_all()

    def send(self, queue, body):
        """SENDs with a receipt; True once the RECEIPT came (within 20 s)."""
        self.conn.send(queue, body, headers={"receipt": body})
        with self.cond:
            return self.cond.wait_for(lambda: body in self.receipts, timeout=20)


def test_stomp_py_queue_survives_consumer_and_owner_node_kill_through_haproxy():
    base = tempfile.mkdtemp(prefix="py-cluster-q-")
    state = os.path.join(base, "state")  # cluster.sh start empties its state dir
    config = os.path.join(base, "nodes.toml")
    with open(config, "w") as f:
        # One queue partition: the queue's owner is the one node that owns a partition.
        f.write(f'[cluster]\ntopic = "{uniq("py-cq-topic")}"\npartitions = 1\n')
    env = dict(os.environ, CLUSTER_DIR=state, CLUSTER_CONFIG=config,
               CLUSTER_GROUP_ID=uniq("py-cq-group"))
    addrs = dict(l.split("=", 1) for l in script(env, "start").splitlines() if "=" in l)
    try:
        nodes = {n: addrs[f"CLUSTER_{n.upper()}_HTTP"] for n in ("node1", "node2", "node3")}
        deadline = time.monotonic() + 60
        owners = []
        while time.monotonic() < deadline:
            owners = [n for n, h in nodes.items()
                      if metric(h, "stomp_cluster_queue_owned_partitions") == 1.0]
            if len(owners) == 1:
                break
            time.sleep(0.1)
        assert len(owners) == 1, f"queue partition owners: {owners}"
        owner = owners[0]

        queue = f"/queue/{uniq('py-cq')}"
        host, port = addrs["CLUSTER_STOMP"].rsplit(":", 1)
        sub = QueueConsumer(host, int(port), queue)
        consumer_node = node_with_connections(nodes)
        if consumer_node == owner:
            # Both kills should happen (the consumer's node, then the owner): while this
            # connection holds the owner, HAProxy's leastconn puts the next one on another node.
            # Nothing has been sent yet, so the swap loses nothing.
            second = QueueConsumer(host, int(port), queue)
            consumer_node = node_with_connections(nodes, except_node=owner)
            sub.closing = True
            sub.conn.disconnect()
            sub = second
        victims = [consumer_node] + ([owner] if owner != consumer_node else [])
        survivor = next(n for n in nodes if n not in victims)
        phost, pport = addrs[f"CLUSTER_{survivor.upper()}_STOMP"].rsplit(":", 1)
        pub = Producer(phost, int(pport))
        print(f"consumer on {consumer_node}, queue owner {owner}, producer on {survivor}")

        kills = {MESSAGES // 3: victims[0]}
        if len(victims) > 1:
            kills[2 * MESSAGES // 3] = victims[1]
        receipted = set()
        for i in range(MESSAGES):
            if i in kills:
                script(env, "kill", kills[i])
            body = f"m{i:04d}"
            if pub.send(queue, body):
                receipted.add(body)
            time.sleep(0.02)

        with sub.cond:
            sub.cond.wait_for(lambda: receipted <= set(sub.bodies), timeout=60)
            missing = sorted(receipted - set(sub.bodies))
            dups = {b: n for b, n in sub.bodies.items() if n > 1}
        print(f"stomp.py queue failover: {len(receipted)}/{MESSAGES} receipted, "
              f"{len(receipted) - len(missing)} of them received, "
              f"{sum(n - 1 for n in dups.values())} duplicates {sorted(dups)}, "
              f"{sub.redelivered} redelivered, {sub.reconnects} reconnects, killed {victims}")
        assert not missing, f"receipted queue messages lost: {missing}"
        assert receipted, "the producer got no RECEIPT at all"
        assert sub.reconnects >= 1, "the consumer never lost its connection"
        pub.conn.disconnect()
        sub.closing = True
        sub.conn.disconnect()
        for victim in victims:
            script(env, "restart", victim)
        status = script(env, "status")
        for victim in victims:
            assert any(l.startswith(f"{victim}: running") and "readyz=200" in l
                       and "haproxy=UP" in l for l in status.splitlines()), status
    finally:
        script(env, "stop")
        shutil.rmtree(base, ignore_errors=True)
