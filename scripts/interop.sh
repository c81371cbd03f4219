#!/usr/bin/env bash
# Third-party-client interop tests for stomp-broker:
#   - stomp.js (Node, over the `ws` package) and a headless-Chromium smoke test  (node --test)
#   - stomp.py over TCP, STOMP 1.0 / 1.1 / 1.2                                    (pytest)
#
# Usage: scripts/interop.sh
#   STOMP_BROKER_BIN=path   use this broker binary (otherwise: cargo build -p stomp-broker,
#                           then target/debug/stomp-broker)
#   STOMP_INTEROP_SKIP_INSTALL=1   don't run scripts/install-deps.sh
#   STOMP_INTEROP_VERBOSE=1        echo broker output and stomp.js debug lines
# Exits non-zero if any suite fails.
set -uo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

log() { printf '\n[interop] %s\n' "$*" >&2; }

if [ -z "${STOMP_BROKER_BIN:-}" ]; then
  log "building stomp-broker (cargo build -p stomp-broker)"
  cargo build -p stomp-broker || { log "cargo build failed"; exit 2; }
  STOMP_BROKER_BIN="$ROOT/target/debug/stomp-broker"
  # Respect a custom CARGO_TARGET_DIR.
  if [ -n "${CARGO_TARGET_DIR:-}" ]; then
    case "$CARGO_TARGET_DIR" in
      /*) STOMP_BROKER_BIN="$CARGO_TARGET_DIR/debug/stomp-broker" ;;
      *) STOMP_BROKER_BIN="$ROOT/$CARGO_TARGET_DIR/debug/stomp-broker" ;;
    esac
  fi
fi
case "$STOMP_BROKER_BIN" in /*) ;; *) STOMP_BROKER_BIN="$ROOT/$STOMP_BROKER_BIN" ;; esac
export STOMP_BROKER_BIN
[ -x "$STOMP_BROKER_BIN" ] || { log "broker binary not executable: $STOMP_BROKER_BIN"; exit 2; }
log "broker: $STOMP_BROKER_BIN"

if [ -z "${STOMP_INTEROP_SKIP_INSTALL:-}" ]; then
  bash "$ROOT/scripts/install-deps.sh" || { log "install-deps failed"; exit 2; }
fi

# node --test resolves packages from tests/interop/node_modules (the test files live there).
NODE_LOG="$(mktemp)"
PY_LOG="$(mktemp)"
trap 'rm -f "$NODE_LOG" "$PY_LOG"' EXIT

log "node --test tests/interop/node/ tests/interop/browser/"
node --test --test-reporter=spec tests/interop/node/ tests/interop/browser/ 2>&1 | tee "$NODE_LOG"
node_rc=${PIPESTATUS[0]}

log "python3 -m pytest -q tests/interop/python"
python3 -m pytest -q -p no:cacheprovider tests/interop/python 2>&1 | tee "$PY_LOG"
py_rc=${PIPESTATUS[0]}

node_pass=$(grep -aE '^ℹ pass [0-9]+' "$NODE_LOG" | tail -1 | grep -oE '[0-9]+$' || echo 0)
node_fail=$(grep -aE '^ℹ fail [0-9]+' "$NODE_LOG" | tail -1 | grep -oE '[0-9]+$' || echo 0)
py_pass=$(grep -aoE '[0-9]+ passed' "$PY_LOG" | tail -1 | grep -oE '^[0-9]+' || echo 0)
py_fail=$(grep -aoE '[0-9]+ (failed|errors?)' "$PY_LOG" | tail -2 | awk '{s+=$1} END {print s+0}')

echo
echo "== interop summary =="
echo "node (stomp.js + chromium): exit $node_rc, pass $node_pass, fail $node_fail"
echo "python (stomp.py):          exit $py_rc, pass $py_pass, fail $py_fail"
echo "$((node_pass + py_pass)) passed, $((node_fail + py_fail)) failed"

if [ "$node_rc" -ne 0 ] || [ "$py_rc" -ne 0 ]; then exit 1; fi
exit 0
