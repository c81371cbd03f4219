#!/usr/bin/env bash
# RabbitMQ (Debian package) as a private, loopback-only process for the
# side-by-side benchmarks in docs/benchmarks.md. No Docker, no system service.
#
#   scripts/rabbitmq.sh install   apt-get install rabbitmq-server (policy-rc.d keeps
#                                 the system service from starting; if it did start,
#                                 it is stopped)
#   scripts/rabbitmq.sh start     install if needed, write config, start in the
#                                 background, wait until Web-STOMP answers; prints
#                                 "ws=ws://127.0.0.1:P/ws stomp=127.0.0.1:Q pid=N"
#   scripts/rabbitmq.sh stop      rabbitmqctl stop, then SIGTERM/SIGKILL fallback
#   scripts/rabbitmq.sh status    "running ... (pid N)" / "stopped"; exit 0 / 3
#   scripts/rabbitmq.sh pid       the beam.smp pid (for loadgen --broker-pid)
#
# Enabled plugins: rabbitmq_web_stomp only (it pulls in rabbitmq_stomp, whose
# TCP listener is moved to 127.0.0.1 as well). Binary WebSocket frames,
# permessage-deflate off, guest/guest (allowed on loopback by default).
# Every listener, epmd and Erlang distribution are bound to 127.0.0.1.
#
# Environment:
#   RABBIT_DIR         state directory (default: ${TMPDIR:-/tmp}/stomp-bench-rabbitmq)
#   RABBIT_WS_PORT     Web-STOMP port (default 15694; ours defaults to 15674)
#   RABBIT_STOMP_PORT  STOMP/TCP port (default 61633; ours defaults to 61613)
#   RABBIT_AMQP_PORT   AMQP port (default 5692)
#   RABBIT_DIST_PORT   Erlang distribution port (default 25692)
#   RABBIT_EPMD_PORT   epmd port (default 4389)
#   RABBIT_CPU         CPU list for taskset (default: unpinned; bench scripts pass 0)
#   RABBIT_SCHEDULERS  Erlang schedulers (+S), default: number of CPUs in RABBIT_CPU or nproc
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
RDIR="${RABBIT_DIR:-${TMPDIR:-/tmp}/stomp-bench-rabbitmq}"
WS_PORT="${RABBIT_WS_PORT:-15694}"
STOMP_PORT="${RABBIT_STOMP_PORT:-61633}"
AMQP_PORT="${RABBIT_AMQP_PORT:-5692}"
DIST_PORT="${RABBIT_DIST_PORT:-25692}"
EPMD_PORT="${RABBIT_EPMD_PORT:-4389}"
NODENAME="bench-rabbit@localhost"
RBIN=/usr/lib/rabbitmq/bin

log() { echo "rabbitmq.sh: $*" >&2; }
die() { log "error: $*"; exit 1; }

export RABBITMQ_NODENAME="$NODENAME"
export RABBITMQ_BASE="$RDIR"
export RABBITMQ_CONFIG_FILE="$RDIR/rabbitmq"          # .conf appended by RabbitMQ
export RABBITMQ_ADVANCED_CONFIG_FILE="$RDIR/advanced.config"
export RABBITMQ_MNESIA_BASE="$RDIR/mnesia"
export RABBITMQ_LOG_BASE="$RDIR/log"
export RABBITMQ_ENABLED_PLUGINS_FILE="$RDIR/enabled_plugins"
export RABBITMQ_PID_FILE="$RDIR/rabbit.pid"
export RABBITMQ_NODE_IP_ADDRESS=127.0.0.1
export RABBITMQ_NODE_PORT="$AMQP_PORT"
export RABBITMQ_DIST_PORT="$DIST_PORT"
export ERL_EPMD_ADDRESS=127.0.0.1
export ERL_EPMD_PORT="$EPMD_PORT"
export HOME="$RDIR"                                   # .erlang.cookie lives here
export RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS="-kernel inet_dist_use_interface {127,0,0,1}"
export RABBITMQ_CTL_ERL_ARGS="-kernel inet_dist_use_interface {127,0,0,1}"  # rabbitmqctl's own node

cmd_install() {
    if [[ -x "$RBIN/rabbitmq-server" ]]; then
        return 0
    fi
    command -v apt-get >/dev/null || die "apt-get not found: rabbitmq-server comes from Debian's package"
    log "installing rabbitmq-server from Debian (the system service is not started)"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends rabbitmq-server >/dev/null
    # policy-rc.d normally denies the start; if a service did start, stop it
    # and keep it from coming back (we run our own node with our own config).
    if pgrep -u rabbitmq beam.smp >/dev/null 2>&1; then
        (service rabbitmq-server stop || invoke-rc.d rabbitmq-server stop || true) >/dev/null 2>&1
    fi
    (update-rc.d rabbitmq-server disable || systemctl disable rabbitmq-server || true) >/dev/null 2>&1
}

write_config() {
    mkdir -p "$RDIR" "$RDIR/log" "$RDIR/mnesia"
    cat >"$RDIR/rabbitmq.conf" <<EOF
listeners.tcp.1 = 127.0.0.1:$AMQP_PORT
stomp.listeners.tcp.1 = 127.0.0.1:$STOMP_PORT
web_stomp.tcp.ip = 127.0.0.1
web_stomp.tcp.port = $WS_PORT
web_stomp.ws_frame = binary
web_stomp.ws_opts.compress = false
web_stomp.max_connections = infinity
web_stomp.tcp.backlog = 4096
loopback_users.guest = true
log.console = false
log.file.level = warning
EOF
    echo '[rabbitmq_web_stomp].' >"$RDIR/enabled_plugins"
    echo '[].' >"$RDIR/advanced.config"
    if [[ ! -f "$RDIR/.erlang.cookie" ]]; then
        head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$RDIR/.erlang.cookie"
        chmod 400 "$RDIR/.erlang.cookie"
    fi
}

beam_pid() {
    [[ -f "$RDIR/rabbit.pid" ]] || return 1
    local p
    p="$(cat "$RDIR/rabbit.pid" 2>/dev/null || true)"
    [[ -n "$p" ]] && kill -0 "$p" 2>/dev/null && { echo "$p"; return 0; }
    return 1
}

ws_up() { (exec 3<>"/dev/tcp/127.0.0.1/$WS_PORT") 2>/dev/null; }

cmd_start() {
    cmd_install
    if beam_pid >/dev/null && ws_up; then
        echo "ws=ws://127.0.0.1:$WS_PORT/ws stomp=127.0.0.1:$STOMP_PORT pid=$(beam_pid)"
        return 0
    fi
    write_config
    local cpus sched pin=()
    if [[ -n "${RABBIT_CPU:-}" ]]; then
        pin=(taskset -c "$RABBIT_CPU")
        cpus=$(( $(echo "$RABBIT_CPU" | tr ',' '\n' | wc -l) ))
    else
        cpus="$(nproc)"
    fi
    sched="${RABBIT_SCHEDULERS:-$cpus}"
    export RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS="$RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS +S $sched:$sched"
    ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
    log "starting $NODENAME (ws $WS_PORT, stomp $STOMP_PORT, schedulers $sched${RABBIT_CPU:+, cpus $RABBIT_CPU})"
    # epmd first, on loopback, so the node does not start one on 0.0.0.0.
    "${pin[@]}" epmd -address 127.0.0.1 -port "$EPMD_PORT" -daemon
    nohup "${pin[@]}" "$RBIN/rabbitmq-server" >"$RDIR/log/stdout.log" 2>&1 &
    local i
    for i in $(seq 1 120); do
        if beam_pid >/dev/null && ws_up; then
            echo "ws=ws://127.0.0.1:$WS_PORT/ws stomp=127.0.0.1:$STOMP_PORT pid=$(beam_pid)"
            return 0
        fi
        sleep 1
    done
    tail -30 "$RDIR/log/stdout.log" >&2 || true
    die "RabbitMQ did not open Web-STOMP on 127.0.0.1:$WS_PORT within 120 s (log: $RDIR/log)"
}

cmd_stop() {
    local p
    p="$(beam_pid || true)"
    if [[ -n "$p" ]]; then
        timeout 30 "$RBIN/rabbitmqctl" -n "$NODENAME" stop >/dev/null 2>&1 || true
        for _ in $(seq 1 20); do kill -0 "$p" 2>/dev/null || break; sleep 0.5; done
        if kill -0 "$p" 2>/dev/null; then kill -TERM "$p" 2>/dev/null || true; sleep 2; fi
        if kill -0 "$p" 2>/dev/null; then kill -KILL "$p" 2>/dev/null || true; fi
    fi
    rm -f "$RDIR/rabbit.pid"
    # Our private epmd (loopback, our port) only.
    epmd -port "$EPMD_PORT" -kill >/dev/null 2>&1 || true
    # Wipe queues etc. so every start is a fresh node.
    rm -rf "$RDIR/mnesia"
    log "stopped"
}

cmd_status() {
    if p="$(beam_pid)" && ws_up; then
        echo "running ws=ws://127.0.0.1:$WS_PORT/ws stomp=127.0.0.1:$STOMP_PORT (pid $p)"
    else
        echo "stopped"; exit 3
    fi
}

case "${1:-}" in
    install) cmd_install ;;
    start) cmd_start ;;
    stop) cmd_stop ;;
    status) cmd_status ;;
    pid) beam_pid || exit 1 ;;
    *) echo "usage: $0 install|start|stop|status|pid" >&2; exit 2 ;;
esac
