"""stomp.py over TCP through HAProxy in front of a 3-node cluster (scripts/cluster.sh): the node
the subscriber is on is SIGKILLed; the listener reconnects through HAProxy and resubscribes, as
stomp.py users do; every Kafka-routed record (SENT to /app/<topic>, routed back to
/topic/order.<key>) arrives at least once (the retained replay on resubscribe fills the gap;
duplicates are counted and printed); the killed node restarts and rejoins (/readyz 200, UP)."""
import os
import subprocess
import tempfile
import threading
import time
import urllib.request
from collections import Counter

import stomp

from conftest import REPO_ROOT, Broker
from test_stomp_py import uniq

RECORDS = 150


def script(env, *args):
    out = subprocess.run(["bash", str(REPO_ROOT / "scripts/cluster.sh"), *args], env=env,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, f"cluster.sh {args}: {out.stdout}\n{out.stderr}"
    return out.stdout


def connections(http):
    try:
        with urllib.request.urlopen(f"{http}/metrics", timeout=2) as r:
            for line in r.read().decode().splitlines():
                if line.startswith("stomp_connections "):
                    return int(float(line.split()[1]))
    except OSError:
        return 0
    return 0


class Subscriber(stomp.ConnectionListener):
    def __init__(self, host, port):
        self.cond = threading.Condition()
        self.bodies = Counter()
        self.reconnects = 0
        self.closing = False
        self.conn = stomp.Connection12([(host, port)], heartbeats=(0, 0),
                                       reconnect_attempts_max=1)
        self.conn.set_listener("", self)
        self.connect()

    def connect(self):
        deadline = time.monotonic() + 20
        while True:
            try:
                self.conn.connect(wait=True)
                self.conn.subscribe("/topic/order.*", id="s", ack="auto")
                return
            except Exception:  # noqa: BLE001 - HAProxy may still pick the dead node
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)

    def on_message(self, frame):
        with self.cond:
            self.bodies[frame.body] += 1
            self.cond.notify_all()

    def on_disconnected(self):
        # Reconnect through HAProxy and resubscribe (off stomp.py's receiver thread).
        if self.closing:
            return
        self.reconnects += 1
        threading.Thread(target=self.connect, daemon=True).start()


def test_stomp_py_survives_node_kill_through_haproxy():
    kafka = subprocess.run(["bash", str(REPO_ROOT / "scripts/kafka.sh"), "start"], check=True,
                           capture_output=True, text=True).stdout.strip().splitlines()[-1]
    topic = uniq("py-cluster-orders")
    # Create the topic (Kafka auto-creates on the first record) before the nodes route it.
    seed = Broker(["--kafka-brokers", kafka])
    try:
        c = stomp.Connection12([(seed.stomp_host, seed.stomp_port)])
        c.connect(wait=True)
        c.send(f"/app/{topic}", "seed", headers={"kafka-key": "seed", "receipt": "r0"})
        c.disconnect()
    finally:
        seed.stop()

    state = tempfile.mkdtemp(prefix="py-cluster-")
    env = dict(os.environ, CLUSTER_DIR=state, CLUSTER_ROUTES=f"{topic}=/topic/order.{{key}}",
               CLUSTER_GROUP_ID=uniq("py-cluster-group"), CLUSTER_TOPIC=uniq("py-cluster-topic"))
    addrs = dict(l.split("=", 1) for l in script(env, "start").splitlines() if "=" in l)
    try:
        host, port = addrs["CLUSTER_STOMP"].rsplit(":", 1)
        sub = Subscriber(host, int(port))
        nodes = {n: addrs[f"CLUSTER_{n.upper()}_HTTP"] for n in ("node1", "node2", "node3")}
        deadline = time.monotonic() + 10
        mine = []
        while not mine and time.monotonic() < deadline:
            mine = [n for n, h in nodes.items() if connections(h) > 0]
            time.sleep(0.05)
        assert len(mine) == 1, f"subscriber's node: {mine}"
        victim = mine[0]
        other = next(n for n in nodes if n != victim)
        phost, pport = addrs[f"CLUSTER_{other.upper()}_STOMP"].rsplit(":", 1)
        pub = stomp.Connection12([(phost, int(pport))])
        pub.connect(wait=True)
        for i in range(RECORDS):
            if i == RECORDS // 3:
                script(env, "kill", victim)
            pub.send(f"/app/{topic}", f"r{i}", headers={"kafka-key": f"k{i:04d}"})
            time.sleep(0.02)
        want = {f"r{i}" for i in range(RECORDS)}
        with sub.cond:
            sub.cond.wait_for(lambda: want <= set(sub.bodies), timeout=60)
            missing = sorted(want - set(sub.bodies))
            dups = {b: n for b, n in sub.bodies.items() if n > 1}
        print(f"stomp.py failover: {RECORDS - len(missing)}/{RECORDS} records, "
              f"{sum(n - 1 for n in dups.values())} duplicates, {sub.reconnects} reconnects")
        assert not missing, f"missing records: {missing[:20]}"
        assert sub.reconnects >= 1, "the subscriber never lost its connection"
        pub.disconnect()
        sub.closing = True
        sub.conn.disconnect()
        script(env, "restart", victim)
        status = script(env, "status")
        assert any(l.startswith(f"{victim}: running") and "readyz=200" in l and "haproxy=UP" in l
                   for l in status.splitlines()), status
    finally:
        script(env, "stop")
