#!/usr/bin/env python3
"""Hostile input against a running broker, measuring its memory.

Opens N TCP connections in turn, each sending one of a set of hostile inputs
(oversized frames, header floods, bad escapes, lying content-length, garbage,
half frames then close, thousands of subscriptions), reads until the broker
closes, and samples the broker's RSS (/proc/<pid>/status) every 1,000
connections. Usage: hostile-memory.py HOST:PORT BROKER_PID [N]
Only for addresses on this machine (127.0.0.0/8)."""
import socket, sys, time

host, port = sys.argv[1].rsplit(":", 1)
assert host.startswith("127."), "loopback only"
pid, n = int(sys.argv[2]), int(sys.argv[3]) if len(sys.argv) > 3 else 20000
CONNECT = b"CONNECT\naccept-version:1.2\n\n\0"
big = b"x" * (2 * 1024 * 1024)
cases = [
    CONNECT + b"SEND\ndestination:/topic/a\ncontent-length:%d\n\n" % len(big) + big + b"\0",
    CONNECT + b"SEND\ndestination:/topic/a\n" + b"h:v\n" * 500 + b"\nb\0",
    CONNECT + b"SEND\ndestination:/topic/a\nx:a\\tb\n\nb\0",
    CONNECT + b"SEND\ndestination:/topic/a\ncontent-length:2\n\nhello\0",
    CONNECT + b"SEND\ndestination:/topic/a\ncontent-length:100\n\nshort",          # then close
    b"\xff\xfe\x00garbage" * 100,
    b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
    CONNECT + b"".join(b"SUBSCRIBE\nid:%d\ndestination:/topic/s.%d\n\n\0" % (i, i) for i in range(2000)),
    CONNECT + b"ACK\nid:999\n\n\0",
    CONNECT + b"SEND\ndestination:/topic/a\nx-long:" + b"y" * 20000 + b"\n\nb\0",
]

def rss_kib():
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1])

print(f"{'connections':>12} {'rss_kib':>9}")
print(f"{0:>12} {rss_kib():>9}")
start = time.time()
for i in range(1, n + 1):
    s = socket.create_connection((host, int(port)))
    s.settimeout(5)
    try:
        s.sendall(cases[i % len(cases)])
        s.shutdown(socket.SHUT_WR)  # half-close: the broker sees EOF mid-frame
        while s.recv(65536):
            pass
    except OSError:
        pass
    finally:
        s.close()
    if i % 1000 == 0:
        print(f"{i:>12} {rss_kib():>9}", flush=True)
print(f"{n} hostile connections in {time.time() - start:.1f} s")
