#!/usr/bin/env bash
# Shared helpers for scripts/bench-*.sh (sourced, not run).
#
# Pinning: the broker runs on CPU $BROKER_CPU (default 0), the load generator
# on CPU $GEN_CPU (default 1). On a shared 2-core machine other work competes
# for both cores; BENCH_NICE (default -10) is applied to this script's
# scheduler autogroup and to the processes (set BENCH_NICE=0 to disable).

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$ROOT/target}"
BIN_DIR="$CARGO_TARGET_DIR/release"
BROKER_BIN="$BIN_DIR/stomp-broker"
LOADGEN_BIN="$BIN_DIR/loadgen"
BARE_BIN="$BIN_DIR/bare-fanout"
BROKER_CPU="${BROKER_CPU:-0}"
GEN_CPU="${GEN_CPU:-1}"
BENCH_NICE="${BENCH_NICE:--10}"
WORK="${BENCH_WORK:-$(mktemp -d /tmp/stomp-bench.XXXXXX)}"
OURS_PID=""

blog() { echo "bench: $*" >&2; }

bench_prepare() {
    # Many connections: raise the open-file limit as far as allowed.
    ulimit -n 200000 2>/dev/null || ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
    blog "open files: $(ulimit -n) (hard $(ulimit -Hn)); ephemeral ports: $(sysctl -n net.ipv4.ip_local_port_range 2>/dev/null | tr '\t' ' ')"
    blog "loadgen spreads client sockets over 127.0.0.2..127.0.0.65 (--source-ips 64)"
    if [[ "$BENCH_NICE" != 0 ]]; then
        echo "$BENCH_NICE" >/proc/self/autogroup 2>/dev/null || true
        renice -n "$BENCH_NICE" -p $$ >/dev/null 2>&1 || true
        blog "scheduler: autogroup $(cat /proc/self/autogroup 2>/dev/null), nice $BENCH_NICE"
    fi
}

bench_build() {
    if [[ "${BENCH_NO_BUILD:-0}" == 1 && -x "$BROKER_BIN" && -x "$LOADGEN_BIN" ]]; then
        return 0
    fi
    blog "building release binaries (CARGO_TARGET_DIR=$CARGO_TARGET_DIR)"
    (cd "$ROOT" && cargo build --release -q -p stomp-broker -p loadgen)
}

machine_info() {
    echo "nproc=$(nproc) cpu=\"$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ //')\" kernel=$(uname -r) mem=$(free -g | awk '/Mem:/{print $2}')GiB load=\"$(cut -d' ' -f1-3 /proc/loadavg)\""
}

# start_ours [extra broker flags...]: fresh broker pinned to $BROKER_CPU.
start_ours() {
    rm -f "$WORK/ours.ports"
    taskset -c "$BROKER_CPU" "$BROKER_BIN" --stomp-listen 127.0.0.1:0 --http-listen 127.0.0.1:0 \
        --port-file "$WORK/ours.ports" --log-level warn "$@" >"$WORK/ours.log" 2>&1 &
    OURS_PID=$!
    wait_port_file stomp-broker
}

# start_bare [bare-fanout flags...]: the S1 baseline (loadgen's bare-fanout:
# tokio-tungstenite fan-out without STOMP) in place of the broker, pinned
# the same way; stop it with stop_ours, drive it with loadgen_bare.
start_bare() {
    rm -f "$WORK/ours.ports"
    taskset -c "$BROKER_CPU" "$BARE_BIN" --port-file "$WORK/ours.ports" "$@" \
        >"$WORK/ours.log" 2>&1 &
    OURS_PID=$!
    wait_port_file bare-fanout
}

wait_port_file() {
    local i
    for i in $(seq 1 100); do
        [[ -s "$WORK/ours.ports" ]] && { sleep 0.2; return 0; }
        kill -0 "$OURS_PID" 2>/dev/null || { cat "$WORK/ours.log" >&2; return 1; }
        sleep 0.1
    done
    blog "$1 did not write its port file"; return 1
}

stop_ours() {
    if [[ -n "$OURS_PID" ]] && kill -0 "$OURS_PID" 2>/dev/null; then
        kill -TERM "$OURS_PID" 2>/dev/null || true
        local i
        for i in $(seq 1 50); do kill -0 "$OURS_PID" 2>/dev/null || break; sleep 0.2; done
        kill -KILL "$OURS_PID" 2>/dev/null || true
        wait "$OURS_PID" 2>/dev/null || true
    fi
    OURS_PID=""
}

# loadgen_ours <scenario> [args...]
loadgen_ours() {
    local sc="$1"; shift
    taskset -c "$GEN_CPU" "$LOADGEN_BIN" "$sc" --port-file "$WORK/ours.ports" \
        --broker-pid "$OURS_PID" --label stomp-broker "$@"
}

# loadgen_bare s1 [args...]: loadgen against start_bare's server.
loadgen_bare() {
    local sc="$1"; shift
    taskset -c "$GEN_CPU" "$LOADGEN_BIN" "$sc" --bare --port-file "$WORK/ours.ports" \
        --broker-pid "$OURS_PID" --label bare-fanout "$@"
}

start_rabbit() {
    RABBIT_CPU="$BROKER_CPU" RABBIT_SCHEDULERS=1 bash "$ROOT/scripts/rabbitmq.sh" start >/dev/null
    RABBIT_PID="$(bash "$ROOT/scripts/rabbitmq.sh" pid)"
    RABBIT_WS_URL="ws://127.0.0.1:${RABBIT_WS_PORT:-15694}/ws"
}

# wait_idle <pid>: until the process uses < 3 % CPU over a second (at most
# 90 s), so one scenario's teardown (e.g. RabbitMQ closing 10,000
# connections) is not measured as the next scenario's cost.
wait_idle() {
    local pid="$1" i a b
    for i in $(seq 1 90); do
        a=$(awk '{print $14+$15}' "/proc/$pid/stat" 2>/dev/null) || return 0
        sleep 1
        b=$(awk '{print $14+$15}' "/proc/$pid/stat" 2>/dev/null) || return 0
        (( b - a < 3 )) && return 0
    done
    blog "pid $pid still busy after 90 s"
}

stop_rabbit() { bash "$ROOT/scripts/rabbitmq.sh" stop >/dev/null 2>&1 || true; }

# loadgen_rabbit <scenario> [args...]
loadgen_rabbit() {
    local sc="$1"; shift
    taskset -c "$GEN_CPU" "$LOADGEN_BIN" "$sc" --ws-url "$RABBIT_WS_URL" \
        --login guest --passcode guest --vhost / \
        --broker-pid "$RABBIT_PID" --label rabbitmq "$@"
}

# start_kafka_private: a single-node Kafka (scripts/kafka.sh) with its own
# state dir ($WORK/kafka; jars shared with .kafka/libs, fetched if missing),
# so benchmarks neither disturb nor are disturbed by the test suite's Kafka.
# Sets KAFKA_BOOTSTRAP and KAFKA_PID. The JVM is not pinned; it gets the
# benchmark's scheduler priority (its own autogroup, setsid'd by kafka.sh).
start_kafka_private() {
    export KAFKA_DIR="$WORK/kafka"
    export KAFKA_LIBS="${KAFKA_LIBS:-$ROOT/.kafka/libs}"
    # Kafka's own default heap (kafka-server-start.sh). scripts/kafka.sh's
    # 256-512 MiB suits tests, but Kafka keeps ~170 MiB live (the log
    # cleaner's 128 MiB dedupe buffer), so under load G1 then runs a
    # concurrent cycle (two more pauses) every few seconds.
    export KAFKA_HEAP_OPTS="${KAFKA_HEAP_OPTS:--Xms1g -Xmx1g}"
    KAFKA_BOOTSTRAP="$(bash "$ROOT/scripts/kafka.sh" start)"
    KAFKA_PID="$(cat "$KAFKA_DIR/kafka.pid")"
    if [[ "$BENCH_NICE" != 0 ]]; then
        echo "$BENCH_NICE" >"/proc/$KAFKA_PID/autogroup" 2>/dev/null || true
    fi
    blog "private Kafka at $KAFKA_BOOTSTRAP (pid $KAFKA_PID, dir $KAFKA_DIR)"
}

stop_kafka_private() {
    # reset = stop and delete the data dir (the jars stay in $KAFKA_LIBS).
    KAFKA_DIR="$WORK/kafka" bash "$ROOT/scripts/kafka.sh" reset || true
}
