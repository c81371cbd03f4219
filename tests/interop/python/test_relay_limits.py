"""stomp.py sessions shaped like Spring's broker relay (STOMP over TCP, one connection per
browser session, all from one address, plus a "system" connection carrying the app's sends):
authenticated sessions pass the per-address cap on unauthenticated sockets, the system login is
not cut off by the frame-rate limit while another login is, and refusals are logged once
(rate-limited) with peer and reason."""
import selectors
import socket
import tempfile
import time
from pathlib import Path

import pytest
import stomp

from conftest import Broker
from test_stomp_py import Recorder, uniq

UNAUTH_CAP = 5
RATE = 50


@pytest.fixture
def relay_broker():
    """A broker per test: sockets a test closed may still hold their slots for a moment."""
    with tempfile.TemporaryDirectory(prefix="stomp-relay-py-") as d:
        config = Path(d) / "broker.toml"
        config.write_text(
            "[limits]\n"
            f"max_unauthenticated_per_address = {UNAUTH_CAP}\n"
            f"max_frames_per_second = {RATE}\n"
            'system_logins = ["relay-system"]\n')
        b = Broker(extra_args=["--config", str(config)])
        yield b
        rc = b.stop()
        assert rc == 0, f"broker exit code after SIGTERM: {rc}\n{b.logs()}"


@pytest.fixture
def session(relay_broker):
    made = []

    def make(login):
        conn = stomp.Connection12([(relay_broker.stomp_host, relay_broker.stomp_port)],
                                  reconnect_attempts_max=1)
        rec = Recorder()
        conn.set_listener("rec", rec)
        conn.connect(login, "pw", wait=True, headers={"host": "/"})
        rec.wait(lambda: rec.connected, f"CONNECTED for {login}")
        made.append(conn)
        return conn, rec

    yield make
    for conn in made:
        try:
            if conn.is_connected():
                conn.disconnect()
        except Exception:  # noqa: BLE001 - best effort cleanup
            pass


def open_unauthenticated(broker, n, within=5.0):
    """Opens n TCP connections that never send CONNECT; returns (refused, silent): what the
    refused ones were told before the broker closed them, and the sockets still open and silent
    once the rest were answered (or `within` passed). Which ones are refused is up to the broker
    (each is admitted in its own task)."""
    socks = [socket.create_connection((broker.stomp_host, broker.stomp_port)) for _ in range(n)]
    sel = selectors.DefaultSelector()
    data = {}
    for s in socks:
        s.setblocking(False)
        sel.register(s, selectors.EVENT_READ)
        data[s] = b""
    closed = []
    deadline = time.monotonic() + within
    while len(closed) < n - UNAUTH_CAP and time.monotonic() < deadline:
        for key, _ in sel.select(timeout=max(0.0, deadline - time.monotonic())):
            s = key.fileobj
            chunk = s.recv(4096)
            if chunk:
                data[s] += chunk
            else:
                sel.unregister(s)
                closed.append(s)
    sel.close()
    refused = [data[s].decode("utf-8", "replace") for s in closed]
    for s in closed:
        s.close()
    silent = [s for s in socks if s not in closed]
    for s in silent:
        assert data[s] == b"", data[s]
    return refused, silent


def test_authenticated_sessions_pass_the_unauthenticated_cap_and_refusals_are_logged_once(
        relay_broker, session):
    sessions = [session(f"browser-{i}") for i in range(4 * UNAUTH_CAP)]
    # Sockets that never send CONNECT: the cap admits UNAUTH_CAP of them.
    refused, idle = open_unauthenticated(relay_broker, UNAUTH_CAP + 10)
    try:
        assert len(refused) == 10 and len(idle) == UNAUTH_CAP, (len(refused), len(idle))
        for a in refused:
            assert a.startswith("ERROR\n"), a
            assert "message:too many unauthenticated connections from this address" in a, a
        # Every authenticated session still works.
        for conn, rec in sessions:
            rid = uniq("send")
            conn.send(f"/topic/{uniq('relay')}", "x", headers={"receipt": rid})
            rec.wait_receipt(rid)
    finally:
        for s in idle:
            s.close()

    def lines():
        return [line for line in relay_broker.logs().split("\n")
                if "connection refused" in line and "max_unauthenticated_per_address" in line]

    deadline = time.monotonic() + 5
    while not lines() and time.monotonic() < deadline:
        time.sleep(0.02)
    got = lines()
    assert got, relay_broker.logs()
    # Ten refusals, but at most one line a second (the test takes well under three).
    assert len(got) <= 3, "\n".join(got)
    assert "WARN" in got[0] and "127.0.0.1" in got[0], got[0]


def test_the_system_login_is_not_cut_off_above_the_frame_rate_limit(session):
    dest = f"/topic/{uniq('app')}"
    watcher, wrec = session("watcher")
    rid = uniq("sub")
    watcher.subscribe(dest, id="w", ack="auto", headers={"receipt": rid})
    wrec.wait_receipt(rid)
    flood = 6 * RATE

    system, srec = session("relay-system")
    for i in range(flood):
        system.send(dest, str(i))
    rid = uniq("last")
    system.send(dest, "last", headers={"receipt": rid})
    srec.wait_receipt(rid)
    got = wrec.wait_messages(flood + 1, dest)
    assert [m.body for m in got] == [str(i) for i in range(flood)] + ["last"]

    other, orec = session("alice")
    for i in range(flood):
        try:
            other.send(dest, str(i))
        except Exception:  # noqa: BLE001 - the broker closes the connection mid-flood
            break
    orec.wait(lambda: orec.errors, "ERROR for the other login")
    assert orec.errors[0].headers.get("message") == "rate limit exceeded"

    # The system connection keeps working.
    rid = uniq("still")
    system.send(dest, "still-here", headers={"receipt": rid})
    srec.wait_receipt(rid)
    assert not srec.errors
