#!/usr/bin/env bash
# The order-tracking demo in one command (docs/demo.md):
#
#   Kafka (scripts/kafka.sh) → topics `orders` and `order-results` (3 partitions)
#   → order-simulator (consumes orders, writes RECEIVED/PAYMENT_OK/PACKED/SHIPPED to order-results)
#   → stomp-broker (examples/demo/broker.toml: route order-results=/user/{json:/customerId}/queue/order-updates)
#   → demo-web (serves examples/web/ and the stomp.js bundle) → open the printed URL.
#
# Ctrl-C stops everything this script started (Kafka only if it was not already running).
#
# Environment:
#   DEMO_RELEASE=1        build and run release binaries (default: debug — the first build is
#                         quicker and the demo needs no speed)
#   DEMO_STOMP_PORT       STOMP/TCP port (default 61613)
#   DEMO_HTTP_PORT        broker HTTP/WebSocket port (default 15674)
#   DEMO_WEB_PORT         page port (default 8080)
#   DEMO_STEP_DELAY_MS    delay between status steps (default 700)
#   DEMO_KEEP_KAFKA=1     leave Kafka running on exit even if this script started it
#   CARGO_TARGET_DIR      respected
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

STOMP_PORT="${DEMO_STOMP_PORT:-61613}"
HTTP_PORT="${DEMO_HTTP_PORT:-15674}"
WEB_PORT="${DEMO_WEB_PORT:-8080}"
STEP_DELAY_MS="${DEMO_STEP_DELAY_MS:-700}"
TARGET="${CARGO_TARGET_DIR:-target}"
case "$TARGET" in /*) ;; *) TARGET="$ROOT/$TARGET" ;; esac
if [ -n "${DEMO_RELEASE:-}" ]; then PROFILE=release; CARGO_PROFILE=(--release); else PROFILE=debug; CARGO_PROFILE=(); fi
BIN="$TARGET/$PROFILE"
LOGS="$TARGET/demo-logs"
STOMPJS="$ROOT/tests/interop/node_modules/@stomp/stompjs/bundles/stomp.umd.min.js"

say() { printf '\033[1m[demo]\033[0m %s\n' "$*" >&2; }
die() { say "error: $*"; exit 1; }

port_busy() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
for p in "$STOMP_PORT" "$HTTP_PORT" "$WEB_PORT"; do
  if port_busy "$p"; then
    die "127.0.0.1:$p is in use (another broker or demo?); set DEMO_STOMP_PORT / DEMO_HTTP_PORT / DEMO_WEB_PORT"
  fi
done

if [ ! -f "$STOMPJS" ]; then
  say "installing @stomp/stompjs (npm ci in tests/interop, pinned by package-lock.json)"
  (cd tests/interop && PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 npm ci --no-audit --no-fund --loglevel=error </dev/null)
fi

say "building stomp-broker and the examples ($PROFILE)"
cargo build "${CARGO_PROFILE[@]}" -p stomp-broker -p examples \
  --bin stomp-broker --bin order-simulator --bin demo-web --bin subscriber --bin publisher

mkdir -p "$LOGS"
pids=()
started_kafka=0
cleaning=0
cleanup() {
  [ "$cleaning" = 1 ] && return
  cleaning=1
  trap - INT TERM
  say "stopping"
  # Reverse start order: page, broker (drains, commits its offsets), simulator.
  for ((i = ${#pids[@]} - 1; i >= 0; i--)); do kill -TERM "${pids[$i]}" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do
    for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null || true
  done
  if [ "$started_kafka" = 1 ] && [ -z "${DEMO_KEEP_KAFKA:-}" ]; then
    bash scripts/kafka.sh stop || true
  fi
  say "stopped (logs in $LOGS)"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

if bash scripts/kafka.sh status >/dev/null 2>&1; then
  say "Kafka already running; leaving it running afterwards"
else
  say "starting Kafka (scripts/kafka.sh start)"
  started_kafka=1
  bash scripts/kafka.sh start >/dev/null
fi
KAFKA="$(bash scripts/kafka.sh bootstrap)"
say "Kafka at $KAFKA"

# Waits until FILE exists and is non-empty, or process PID died, or N×0.1 s passed.
wait_for_file() {
  local file=$1 pid=$2 what=$3 log=$4
  for _ in $(seq 600); do
    [ -s "$file" ] && return 0
    kill -0 "$pid" 2>/dev/null || { tail -n 30 "$log" >&2; die "$what exited"; }
    sleep 0.1
  done
  tail -n 30 "$log" >&2
  die "$what did not start within 60 s"
}

# 1. The order simulator creates both topics (3 partitions) and prints "order-simulator ready".
say "starting order-simulator (step delay ${STEP_DELAY_MS} ms)"
"$BIN/order-simulator" --brokers "$KAFKA" --partitions 3 --step-delay-ms "$STEP_DELAY_MS" \
  >"$LOGS/simulator.out" 2>"$LOGS/simulator.log" </dev/null &
pids+=($!)
for _ in $(seq 600); do
  grep -q 'order-simulator ready' "$LOGS/simulator.out" 2>/dev/null && break
  kill -0 "${pids[0]}" 2>/dev/null || { tail -n 30 "$LOGS/simulator.log" >&2; die "order-simulator exited"; }
  sleep 0.1
done
grep -q 'order-simulator ready' "$LOGS/simulator.out" || die "order-simulator not ready after 60 s"

# 2. The broker, with the demo's route and Kafka settings.
say "starting stomp-broker (examples/demo/broker.toml)"
rm -f "$LOGS/broker-ports.json"
"$BIN/stomp-broker" --config examples/demo/broker.toml --kafka-brokers "$KAFKA" \
  --stomp-listen "127.0.0.1:$STOMP_PORT" --http-listen "127.0.0.1:$HTTP_PORT" \
  --port-file "$LOGS/broker-ports.json" >"$LOGS/broker.log" 2>&1 </dev/null &
pids+=($!)
wait_for_file "$LOGS/broker-ports.json" "${pids[1]}" stomp-broker "$LOGS/broker.log"

# 3. The page.
rm -f "$LOGS/web-port"
"$BIN/demo-web" --listen "127.0.0.1:$WEB_PORT" --stomp-js "$STOMPJS" --port-file "$LOGS/web-port" \
  >"$LOGS/web.out" 2>"$LOGS/web.log" </dev/null &
pids+=($!)
wait_for_file "$LOGS/web-port" "${pids[2]}" demo-web "$LOGS/web.log"

URL="http://127.0.0.1:$WEB_PORT/"
if [ "$HTTP_PORT" != 15674 ]; then URL="$URL?broker=ws://127.0.0.1:$HTTP_PORT/ws"; fi
cat >&2 <<MSG

  ┌────────────────────────────────────────────────────────────────────────────┐
    Open  $URL
    Two users: a second tab (or a private window) with another user name.
    Watch one user's updates from a terminal:
      $BIN/subscriber --addr 127.0.0.1:$STOMP_PORT --login alice --destination /user/queue/order-updates
    Logs: $LOGS/{broker,simulator,web}.log      Ctrl-C stops everything.
  └────────────────────────────────────────────────────────────────────────────┘

MSG

# Run until Ctrl-C or until one of the processes dies.
set +e
wait -n "${pids[@]}"
rc=$?
say "a demo process exited (status $rc); see $LOGS"
exit "$rc"
