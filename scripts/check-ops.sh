#!/usr/bin/env bash
# Checks the operator files in deploy/ (docs/operations.md):
#   1. promtool check rules  deploy/prometheus/alerts.yml
#   2. promtool check config deploy/prometheus/prometheus.yml
#   3. promtool test rules   deploy/prometheus/alerts_test.yml   (each alert fires / stays silent)
#   4. scripts/check-ops.py: the Grafana dashboard's structure, and every metric name used by the
#      dashboard and the alerts against the live /metrics of a broker started here with the
#      Kafka bridge and cluster mode enabled (Kafka at $KAFKA_BOOTSTRAP, else scripts/kafka.sh's).
#
# Usage: scripts/check-ops.sh        (STOMP_BROKER_BIN=path to use a built broker binary;
#                                     otherwise cargo build -p stomp-broker)
# promtool comes from the Debian `prometheus` package (scripts/install-deps.sh).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
log() { printf '[check-ops] %s\n' "$*" >&2; }

command -v promtool >/dev/null 2>&1 || { log "promtool missing: run scripts/install-deps.sh"; exit 2; }

promtool check rules deploy/prometheus/alerts.yml
promtool check config deploy/prometheus/prometheus.yml
promtool test rules deploy/prometheus/alerts_test.yml

if [ -z "${STOMP_BROKER_BIN:-}" ]; then
  cargo build -q -p stomp-broker
  STOMP_BROKER_BIN="${CARGO_TARGET_DIR:-$ROOT/target}/debug/stomp-broker"
fi
KAFKA_BOOTSTRAP="${KAFKA_BOOTSTRAP:-$(bash scripts/kafka.sh bootstrap 2>/dev/null || true)}"
[ -n "$KAFKA_BOOTSTRAP" ] || { log "no Kafka: set KAFKA_BOOTSTRAP or run scripts/kafka.sh start"; exit 2; }

tmp="$(mktemp -d)"
pid=""
cleanup() {
  if [ -n "$pid" ]; then kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; fi
  rm -rf "$tmp"
}
trap cleanup EXIT

# A unique cluster topic and bridge topic per run; the broker creates both.
run="ops-check-$$-$(date +%s)"
cat >"$tmp/broker.toml" <<TOML
[kafka]
brokers = "$KAFKA_BOOTSTRAP"
group_id = "$run"
auto_offset_reset = "earliest"
stats_interval = 1
[kafka.client]
"topic.metadata.refresh.interval.ms" = "1000"
[cluster]
enabled = true
node_id = "ops-check"
topic = "$run.cluster"
TOML
"$STOMP_BROKER_BIN" --config "$tmp/broker.toml" \
  --stomp-listen 127.0.0.1:0 --http-listen 127.0.0.1:0 --port-file "$tmp/ports.json" \
  --route "$run.events=/topic/ops.{key}" >"$tmp/broker.log" 2>&1 &
pid=$!

# Traffic: a SEND to /app/<topic> creates the bridge's topic in Kafka (and counts as
# produced); then ready (cluster joined, bridge assigned), then scrape /metrics.
python3 - "$tmp/ports.json" "$tmp/metrics.txt" "$pid" "$run.events" <<'PY' || { log "broker log:"; tail -n 40 "$tmp/broker.log" >&2; exit 1; }
import json, os, socket, sys, time, urllib.request, urllib.error
ports, out, pid, topic = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
deadline = time.monotonic() + 60
def alive():
    try:
        os.kill(pid, 0)
        return True
    except OSError:
        return False
def stomp_send(addr):
    """CONNECT, SEND to /app/<topic> with a receipt (Kafka acknowledged it), DISCONNECT."""
    host, port = addr.rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=30) as s:
        s.sendall(b"CONNECT\naccept-version:1.2\nhost:localhost\n\n\0")
        s.sendall(f"SEND\ndestination:/app/{topic}\nkafka-key:k\nreceipt:r1\n\nops-check\0".encode())
        got = b""
        while b"RECEIPT" not in got and b"ERROR" not in got:
            chunk = s.recv(4096)
            if not chunk:
                break
            got += chunk
        if b"RECEIPT" not in got:
            raise OSError(f"no RECEIPT for the SEND: {got[:300]!r}")
http = None
sent = False
last = "no port file"
while time.monotonic() < deadline and alive():
    try:
        if http is None:
            with open(ports) as f:
                p = json.load(f)
            http = p["http"]
            stomp = p["stomp"]
        if not sent:
            stomp_send(stomp)
            sent = True
        with urllib.request.urlopen(f"http://{http}/readyz", timeout=5) as r:
            if r.status == 200:
                break
    except (OSError, ValueError, KeyError, urllib.error.URLError) as e:
        last = str(e)
    time.sleep(0.2)
else:
    sys.exit(f"broker not ready within 60 s ({'running' if alive() else 'exited'}: {last})")
with urllib.request.urlopen(f"http://{http}/metrics", timeout=5) as r:
    text = r.read().decode()
for family in ("stomp_ready", "stomp_cluster_nodes", "kafka_bridge_consumer_lag"):
    if f"# TYPE {family} " not in text:
        sys.exit(f"/metrics lacks {family}: not a broker with Kafka bridge and cluster?")
if "\nstomp_ready 1\n" not in "\n" + text:
    sys.exit("stomp_ready is not 1 although /readyz answered 200")
open(out, "w").write(text)
PY

python3 scripts/check-ops.py deploy/grafana/stomp-broker.json deploy/prometheus/alerts.yml \
  --metrics "$tmp/metrics.txt"
log "ok"
