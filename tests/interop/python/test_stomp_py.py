"""stomp.py (STOMP over TCP) against stomp-broker, for protocol versions 1.0, 1.1 and 1.2."""
import threading
import time
import uuid

import pytest
import stomp

VERSIONS = ["1.0", "1.1", "1.2"]
CONN_CLASSES = {"1.0": stomp.Connection10, "1.1": stomp.Connection11, "1.2": stomp.Connection12}
TIMEOUT = 5.0


def uniq(prefix):
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


class Recorder(stomp.ConnectionListener):
    """Records every frame stomp.py hands us; tests wait on conditions over the records."""

    def __init__(self):
        self.cond = threading.Condition()
        self.connected = []
        self.messages = []
        self.receipts = []
        self.errors = []
        self.disconnects = 0

    def _add(self, lst, item):
        with self.cond:
            lst.append(item)
            self.cond.notify_all()

    def on_connected(self, frame):
        self._add(self.connected, frame)

    def on_message(self, frame):
        self._add(self.messages, frame)

    def on_receipt(self, frame):
        self._add(self.receipts, frame.headers.get("receipt-id"))

    def on_error(self, frame):
        self._add(self.errors, frame)

    def on_disconnected(self):
        with self.cond:
            self.disconnects += 1
            self.cond.notify_all()

    def wait(self, pred, what, timeout=TIMEOUT):
        with self.cond:
            if not self.cond.wait_for(pred, timeout):
                raise AssertionError(
                    f"timed out after {timeout}s waiting for {what}; "
                    f"messages={[(m.headers, m.body) for m in self.messages]} "
                    f"receipts={self.receipts} errors={[(e.headers, e.body) for e in self.errors]}")

    def wait_receipt(self, rid):
        self.wait(lambda: rid in self.receipts or self.errors, f"RECEIPT {rid}")
        assert not self.errors, f"ERROR frames: {[(e.headers, e.body) for e in self.errors]}"

    def wait_messages(self, n, dest=None):
        sel = lambda: [m for m in self.messages if dest is None or m.headers.get("destination") == dest]
        self.wait(lambda: len(sel()) >= n, f"{n} message(s) on {dest or 'any destination'}")
        return sel()

    def bodies(self, dest=None):
        return [m.body for m in self.messages if dest is None or m.headers.get("destination") == dest]


class Client:
    """A connected stomp.py connection of a given protocol version, with its Recorder."""

    def __init__(self, broker, version):
        self.version = version
        self.conn = CONN_CLASSES[version]([(broker.stomp_host, broker.stomp_port)],
                                          reconnect_attempts_max=1)
        self.rec = Recorder()
        self.conn.set_listener("rec", self.rec)
        self.conn.connect("guest", "guest", wait=True, headers={"host": "/"})
        self.rec.wait(lambda: self.rec.connected, "CONNECTED")

    def subscribe(self, dest, sub_id, ack="auto"):
        rid = uniq("sub")
        self.conn.subscribe(dest, id=sub_id, ack=ack, headers={"receipt": rid})
        self.rec.wait_receipt(rid)

    def send(self, dest, body, **headers):
        rid = uniq("send")
        self.conn.send(dest, body, headers={**headers, "receipt": rid})
        self.rec.wait_receipt(rid)

    def ack(self, msg, sub_id, nack=False):
        """ACK/NACK `msg` the way this protocol version identifies messages."""
        rid = uniq("ack")
        h = msg.headers
        fn = self.conn.nack if nack else self.conn.ack
        if self.version == "1.2":
            fn(h["ack"], receipt=rid)
        elif self.version == "1.1":
            fn(h["message-id"], sub_id, receipt=rid)
        else:
            fn(h["message-id"], receipt=rid)
        self.rec.wait_receipt(rid)

    def close(self):
        if self.conn.is_connected():
            self.conn.disconnect(receipt=uniq("disc"))


@pytest.fixture
def clients(broker):
    made = []

    def make(version):
        c = Client(broker, version)
        made.append(c)
        return c

    yield make
    for c in made:
        try:
            c.close()
        except Exception:  # noqa: BLE001 - best effort cleanup
            pass


@pytest.mark.parametrize("version", VERSIONS)
def test_connect(clients, version):
    c = clients(version)
    h = c.rec.connected[0].headers
    if version == "1.0":
        # A 1.0 client sends no accept-version; the broker answers 1.0 (version header optional).
        assert h.get("version", "1.0") == "1.0", h
    else:
        assert h.get("version") == version, h
        assert "heart-beat" in h, h
    assert h.get("session"), h
    assert h.get("server"), h


@pytest.mark.parametrize("version", VERSIONS)
def test_send_receive_with_receipt_and_custom_headers(clients, version):
    c = clients(version)
    dest = f"/topic/{uniq('py')}"
    c.subscribe(dest, "s1")
    c.send(dest, "hello from stomp.py ✓", **{"x-custom": "abc", "x-number": "42",
                                              "content-type": "text/plain;charset=utf-8"})
    [m] = c.rec.wait_messages(1, dest)
    assert m.body == "hello from stomp.py ✓"
    assert m.headers["destination"] == dest
    assert m.headers.get("message-id")
    if version != "1.0":
        assert m.headers.get("subscription") == "s1", m.headers
    assert m.headers.get("x-custom") == "abc", m.headers
    assert m.headers.get("x-number") == "42", m.headers
    assert "receipt" not in m.headers, m.headers


@pytest.mark.parametrize("version", ["1.1", "1.2"])
def test_header_escaping(clients, version):
    c = clients(version)
    dest = f"/topic/{uniq('esc')}"
    c.subscribe(dest, "s1")
    custom = {"x-colon": "a:b", "x-newline": "l1\nl2", "x-backslash": "c\\d"}
    c.send(dest, "e", **custom)
    [m] = c.rec.wait_messages(1, dest)
    for k, v in custom.items():
        assert m.headers.get(k) == v, (k, m.headers)


@pytest.mark.parametrize("version", VERSIONS)
def test_queue_round_trip_between_connections(clients, version):
    producer, consumer = clients(version), clients(version)
    q = f"/queue/{uniq('pyq')}"
    for i in range(3):
        producer.send(q, f"m{i}")
    consumer.subscribe(q, "s1")
    consumer.rec.wait_messages(3, q)
    assert consumer.rec.bodies(q) == ["m0", "m1", "m2"]


@pytest.mark.parametrize("version", VERSIONS)
def test_client_ack_is_cumulative(clients, broker, version):
    a = clients(version)
    q = f"/queue/{uniq('pycum')}"
    a.subscribe(q, "s1", ack="client")
    for i in (1, 2, 3):
        a.send(q, f"m{i}")
    msgs = a.rec.wait_messages(3, q)
    assert [m.body for m in msgs] == ["m1", "m2", "m3"]
    if version == "1.2":
        assert all(m.headers.get("ack") for m in msgs), [m.headers for m in msgs]
    a.ack(msgs[1], "s1")  # acks m1 and m2
    m3_id = msgs[2].headers["message-id"]
    a.close()

    b = clients(version)
    b.subscribe(q, "s2")
    [r] = b.rec.wait_messages(1, q)
    assert r.body == "m3"
    assert r.headers.get("redelivered") == "true", r.headers
    assert r.headers.get("message-id") == m3_id, r.headers
    b.send(q, "m4")
    b.rec.wait(lambda: "m4" in b.rec.bodies(q), "m4")
    assert b.rec.bodies(q) == ["m3", "m4"]


@pytest.mark.parametrize("version", ["1.1", "1.2"])
def test_client_individual_ack_and_nack(clients, version):
    a = clients(version)
    q = f"/queue/{uniq('pyind')}"
    a.subscribe(q, "sa", ack="client-individual")
    for i in (1, 2, 3):
        a.send(q, f"m{i}")
    msgs = a.rec.wait_messages(3, q)
    b = clients(version)
    b.subscribe(q, "sb", ack="client-individual")
    a.ack(msgs[1], "sa", nack=True)  # NACK m2 → to b
    deadline = time.monotonic() + TIMEOUT
    while time.monotonic() < deadline and not b.rec.messages and len(a.rec.messages) <= 3:
        time.sleep(0.01)
    assert len(a.rec.messages) == 3, (
        "NACKed m2 must go to the other consumer b, but was redelivered to the NACKing consumer a: "
        f"{[m.headers for m in a.rec.messages[3:]]}")
    [r] = b.rec.wait_messages(1, q)
    assert r.body == "m2"
    assert r.headers.get("redelivered") == "true", r.headers
    assert r.headers.get("message-id") == msgs[1].headers["message-id"]
    b.ack(r, "sb")
    a.ack(msgs[2], "sa")  # ACK m3 only; m1 stays unacked
    a.close()
    b.rec.wait_messages(2, q)
    assert b.rec.messages[1].body == "m1"
    assert b.rec.messages[1].headers.get("redelivered") == "true"
    b.ack(b.rec.messages[1], "sb")
    b.send(q, "m4")
    b.rec.wait(lambda: "m4" in b.rec.bodies(q), "m4")
    assert b.rec.bodies(q) == ["m2", "m1", "m4"]


@pytest.mark.parametrize("version", VERSIONS)
def test_transactions_commit_and_abort(clients, version):
    c = clients(version)
    dest = f"/topic/{uniq('pytx')}"
    c.subscribe(dest, "s1")
    tx = c.conn.begin()
    c.conn.send(dest, "in-tx", headers={"transaction": tx})
    c.send(dest, "outside")  # with receipt: processed after the transactional SEND
    c.rec.wait(lambda: "outside" in c.rec.bodies(dest), "outside")
    assert c.rec.bodies(dest) == ["outside"], "transactional SEND delivered before COMMIT"
    c.conn.commit(tx)
    c.rec.wait(lambda: "in-tx" in c.rec.bodies(dest), "in-tx after COMMIT")

    tx2 = c.conn.begin()
    c.conn.send(dest, "aborted", headers={"transaction": tx2})
    c.conn.abort(tx2)
    c.send(dest, "after-abort")
    c.rec.wait(lambda: "after-abort" in c.rec.bodies(dest), "after-abort")
    assert c.rec.bodies(dest) == ["outside", "in-tx", "after-abort"]


@pytest.mark.parametrize("version", VERSIONS)
def test_unsubscribe(clients, version):
    c = clients(version)
    dest = f"/topic/{uniq('pyunsub')}"
    other = f"/topic/{uniq('pyother')}"
    c.subscribe(dest, "s1")
    c.subscribe(other, "s2")
    c.send(dest, "one")
    c.rec.wait_messages(1, dest)
    rid = uniq("unsub")
    if version == "1.0":
        c.conn.unsubscribe(id="s1", headers={"receipt": rid})
    else:
        c.conn.unsubscribe("s1", headers={"receipt": rid})
    c.rec.wait_receipt(rid)
    c.send(dest, "two")
    c.send(other, "barrier")
    c.rec.wait(lambda: "barrier" in c.rec.bodies(other), "barrier")
    assert c.rec.bodies(dest) == ["one"]


@pytest.mark.parametrize("version", VERSIONS)
def test_binary_body_over_tcp(clients, version):
    c = clients(version)
    dest = f"/topic/{uniq('pybin')}"
    c.subscribe(dest, "s1")
    # stomp.py decodes bodies as UTF-8 by default; use a body with NULs that is still UTF-8.
    body = "a\x00b\x00\x01\x02end"
    c.send(dest, body, **{"content-type": "application/octet-stream"})
    [m] = c.rec.wait_messages(1, dest)
    assert m.body == body
    assert m.headers.get("content-length") == str(len(body.encode())), m.headers


@pytest.mark.parametrize("version", ["1.1", "1.2"])
def test_heartbeat_negotiation(broker, version):
    conn = CONN_CLASSES[version]([(broker.stomp_host, broker.stomp_port)], heartbeats=(1000, 1000),
                                 reconnect_attempts_max=1)
    rec = Recorder()
    conn.set_listener("rec", rec)
    conn.connect("guest", "guest", wait=True)
    try:
        rec.wait(lambda: rec.connected, "CONNECTED")
        sx, sy = (int(x) for x in rec.connected[0].headers["heart-beat"].split(","))
        assert sx >= 0 and sy >= 0
        time.sleep(0.1)
        assert conn.is_connected()
    finally:
        conn.disconnect()


def test_stomp_1_0_client_individual_and_nack_like_rabbitmq(clients):
    """stomp.py's Connection10 with ack=client-individual and a NACK frame (1.1 features that
    RabbitMQ accepts from 1.0 clients): individual acks, and NACK redelivers."""
    a = clients("1.0")
    q = f"/queue/{uniq('py10ci')}"
    a.subscribe(q, "s10", ack="client-individual")
    a.send(q, "m1")
    a.send(q, "m2")
    m1, m2 = a.rec.wait_messages(2, q)
    assert [m1.body, m2.body] == ["m1", "m2"]
    a.ack(m2, "s10")  # ACK message-id of m2 only: individual, m1 stays unacked
    rid = uniq("nack")
    # stomp.py has no nack() for 1.0; Ruby and stomp.py users send the frame.
    a.conn.send_frame("NACK", {"message-id": m1.headers["message-id"], "receipt": rid})
    a.rec.wait_receipt(rid)
    msgs = a.rec.wait_messages(3, q)
    assert msgs[2].body == "m1", [m.body for m in msgs]
    assert msgs[2].headers.get("redelivered") == "true", msgs[2].headers
    assert msgs[2].headers.get("message-id") == m1.headers["message-id"]


@pytest.mark.parametrize("version", ["1.0", "1.1"])
def test_ack_with_mismatched_subscription_is_applied_by_message_id(clients, version):
    """1.0/1.1 ACK/NACK whose subscription header names another subscription: the message is
    found by message-id alone (RabbitMQ) instead of ERROR and close."""
    a = clients(version)
    q = f"/queue/{uniq('pywrongsub')}"
    a.subscribe(q, "real", ack="client-individual")
    a.send(q, "x")
    [m] = a.rec.wait_messages(1, q)
    rid = uniq("nack")
    a.conn.send_frame("NACK", {"message-id": m.headers["message-id"], "subscription": "other",
                               "receipt": rid})
    a.rec.wait_receipt(rid)
    again = a.rec.wait_messages(2, q)[1]
    assert again.headers.get("redelivered") == "true", again.headers
    rid = uniq("ack")
    a.conn.send_frame("ACK", {"message-id": again.headers["message-id"], "subscription": "other",
                              "receipt": rid})
    a.rec.wait_receipt(rid)
    assert a.conn.is_connected()
    a.close()
    b = clients(version)
    b.subscribe(q, "b")
    b.send(q, "barrier")
    b.rec.wait(lambda: "barrier" in b.rec.bodies(q), "barrier")
    assert b.rec.bodies(q) == ["barrier"], "the acknowledged message came back"


def test_heartbeats_follow_the_clients_request(broker):
    """stomp.py asking for 1 s heart-beats gets 1 s (not the old 10 s floor)."""
    conn = stomp.Connection12([(broker.stomp_host, broker.stomp_port)], heartbeats=(1000, 1000),
                              reconnect_attempts_max=1)
    rec = Recorder()
    conn.set_listener("rec", rec)
    conn.connect("guest", "guest", wait=True)
    try:
        rec.wait(lambda: rec.connected, "CONNECTED")
        assert rec.connected[0].headers["heart-beat"] == "1000,1000", rec.connected[0].headers
    finally:
        conn.disconnect()
