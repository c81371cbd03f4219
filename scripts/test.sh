#!/usr/bin/env bash
# The whole test suite, as README.md gives it and .ci/run calls it.
#
#   1. install what the tests need (Debian chromium, haproxy, prometheus for promtool,
#      JDK 17 + Maven if missing, npm packages, stomp.py, pytest)
#   2. cargo fmt --check and clippy -D warnings
#   3. start a real single-node Apache Kafka (scripts/kafka.sh) unless one is running
#   4. cargo test --workspace (codec, broker, bridge, end-to-end; Kafka tests included)
#   5. third-party clients: stomp.js in Node and headless Chromium, stomp.py over TCP
#   6. operator files in deploy/: promtool checks and rule unit tests of the alerts, the Grafana
#      dashboard's structure and metric names against a live broker (scripts/check-ops.sh)
#   7. Spring (Maven, JUnit 5): the examples/spring-relay app behind its broker relay, and
#      Spring's Java STOMP clients against the broker
#   8. a short fuzz smoke run of the codec
#
# Kafka is stopped at the end if this script started it.
# Long soaks and benchmarks are separate commands (docs/benchmarks.md).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
export CI="${CI:-}"

step() { printf '\n==> %s\n' "$*"; }

# The suite must leave the work tree as it found it: compared at the end.
tree_before="$(git status --porcelain 2>/dev/null || true)"

step "install test dependencies"
bash scripts/install-deps.sh

step "cargo fmt --all --check"
cargo fmt --all --check

step "cargo clippy --workspace --all-targets -- -D warnings"
cargo clippy --workspace --all-targets -- -D warnings

step "fuzz crates' Cargo.lock current (scripts/fuzz-locks.sh check)"
bash scripts/fuzz-locks.sh check

started_kafka=0
if ! bash scripts/kafka.sh status >/dev/null 2>&1; then
  step "start Apache Kafka (scripts/kafka.sh start)"
  bash scripts/kafka.sh start
  started_kafka=1
fi
cleanup() {
  if [ "$started_kafka" = 1 ]; then bash scripts/kafka.sh stop || true; fi
}
trap cleanup EXIT
KAFKA_BOOTSTRAP="$(bash scripts/kafka.sh bootstrap)"
export KAFKA_BOOTSTRAP
echo "Kafka at $KAFKA_BOOTSTRAP"

step "cargo test --workspace --no-fail-fast"
cargo test --workspace --no-fail-fast

step "interop: stomp.js (Node, Chromium) and stomp.py"
cargo build -p stomp-broker
STOMP_BROKER_BIN="$ROOT/target/debug/stomp-broker" STOMP_INTEROP_SKIP_INSTALL=1 bash scripts/interop.sh

step "operator files: Prometheus alerts and Grafana dashboard (scripts/check-ops.sh)"
STOMP_BROKER_BIN="$ROOT/target/debug/stomp-broker" bash scripts/check-ops.sh

step "Spring: examples/spring-relay (broker relay) and Spring's Java STOMP clients (mvn verify)"
# Build output goes to target/spring-relay (the pom's <directory>); test output to
# target/spring-relay/surefire-reports/*-output.txt.
STOMP_BROKER_BIN="$ROOT/target/debug/stomp-broker" \
  mvn -B -ntp -f examples/spring-relay/pom.xml verify </dev/null

if [ -f scripts/fuzz-smoke.sh ]; then
  step "codec fuzz smoke run"
  bash scripts/fuzz-smoke.sh
fi

step "work tree unchanged by the tests"
tree_after="$(git status --porcelain 2>/dev/null || true)"
if [ "$tree_before" != "$tree_after" ]; then
  echo "the test run changed the work tree (a stale lock file? a generated file?):" >&2
  diff <(printf '%s\n' "$tree_before") <(printf '%s\n' "$tree_after") >&2 || true
  exit 1
fi

step "all tests passed"
