#!/usr/bin/env bash
# A 3-node stomp-broker cluster behind HAProxy, on loopback, for trying the cluster out and
# for the failover tests (docs/cluster.md).
#
#   scripts/cluster.sh start          Kafka ($KAFKA_BOOTSTRAP, else scripts/kafka.sh's, reused if
#                                     running), node1..node3,
#                                     HAProxy; waits until every node's /readyz is 200 and
#                                     HAProxy has them UP; prints the front-end addresses
#                                     (idempotent: prints them if already running)
#   scripts/cluster.sh stop           stop HAProxy and the nodes, delete the state dir
#   scripts/cluster.sh kill NODE      SIGKILL one node (node1|node2|node3)
#   scripts/cluster.sh restart NODE   start NODE again with the same id and ports; wait for ready
#   scripts/cluster.sh status         nodes (pid, ports, /readyz), HAProxy (pid, server states);
#                                     exit 0 when everything is up, 3 otherwise
#   scripts/cluster.sh env            the addresses as shell assignments (CLUSTER_STOMP=... )
#
# Environment:
#   CLUSTER_DIR             state dir (default <repo>/target/cluster): pids, ports, logs,
#                           haproxy.cfg, env
#   STOMP_BROKER_BIN        broker binary (default: target/debug/stomp-broker, built if missing)
#   CLUSTER_CONFIG          broker config file for every node (default: none; flags only)
#   CLUSTER_TOPIC           the nodes' cluster topic ([cluster] topic; default the broker's,
#                           "stomp-broker.cluster"); ignored when CLUSTER_CONFIG is set
#   CLUSTER_ROUTES          extra `--route` values separated by ';' (e.g. "t=/topic/order.{key}")
#   CLUSTER_GROUP_ID        Kafka group id base (default "stomp-cluster"); without --cluster
#                           support in the binary each node reads in `<base>.<node>`
#   CLUSTER_STOMP_PORT      HAProxy STOMP/TCP front end (default: a free port)
#   CLUSTER_WS_PORT         HAProxy WebSocket/HTTP front end (default: a free port)
#   CLUSTER_STATS_PORT      HAProxy stats page (default: a free port), /stats and /stats;csv
#   CLUSTER_READY_TIMEOUT   seconds to wait for readiness (default 90)
#   CLUSTER_EXTRA_ARGS      extra broker arguments for every node
#   KAFKA_BOOTSTRAP         use this Kafka (host:port) instead of scripts/kafka.sh's (started if
#                           not running)
#
# Everything listens on 127.0.0.1 only. Nodes are plain child processes (setsid, logs in
# $CLUSTER_DIR/nodeN.log); HAProxy runs unprivileged in daemon mode with a generated config.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DIR="${CLUSTER_DIR:-$ROOT/target/cluster}"
case "$DIR" in /*) ;; *) DIR="$ROOT/$DIR" ;; esac
NODES=(node1 node2 node3)
READY_TIMEOUT="${CLUSTER_READY_TIMEOUT:-90}"
GROUP="${CLUSTER_GROUP_ID:-stomp-cluster}"

say() { printf '[cluster] %s\n' "$*" >&2; }
die() { say "error: $*"; exit 1; }

alive() { [ -n "${1:-}" ] && kill -0 "$1" 2>/dev/null; }
pid_of() { cat "$DIR/$1.pid" 2>/dev/null || true; }

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'
}

http_code() { curl -s -o /dev/null -m 2 -w '%{http_code}' "$1" 2>/dev/null || true; }

broker_bin() {
  local bin="${STOMP_BROKER_BIN:-}"
  if [ -z "$bin" ]; then
    local target="${CARGO_TARGET_DIR:-$ROOT/target}"
    case "$target" in /*) ;; *) target="$ROOT/$target" ;; esac
    bin="$target/debug/stomp-broker"
    if [ ! -x "$bin" ]; then
      say "building stomp-broker (debug)"
      (cd "$ROOT" && cargo build -q -p stomp-broker --bin stomp-broker)
    fi
  fi
  [ -x "$bin" ] || die "broker binary $bin not found"
  printf '%s\n' "$bin"
}

# Starts node $1; ports 0 on the first start, the saved ones on a restart.
start_node() {
  local node=$1 stomp_port=$2 http_port=$3
  local bin; bin="$(cat "$DIR/bin")"
  local args=(--stomp-listen "127.0.0.1:$stomp_port" --http-listen "127.0.0.1:$http_port"
              --port-file "$DIR/$node.ports.json" --kafka-brokers "$(cat "$DIR/bootstrap")")
  if [ -n "${CLUSTER_CONFIG:-}" ]; then
    args+=(--config "$CLUSTER_CONFIG")
  elif [ -n "${CLUSTER_TOPIC:-}" ]; then
    # No flag for the cluster topic: a generated config file carries it.
    printf '[cluster]\ntopic = "%s"\n' "$CLUSTER_TOPIC" >"$DIR/cluster.toml"
    args+=(--config "$DIR/cluster.toml")
  fi
  if "$bin" --help 2>/dev/null | grep -q -- '--cluster'; then
    # Cluster mode: the node reads Kafka routes in `<group>.<node-id>` itself.
    args+=(--cluster --node-id "$node" --kafka-group-id "$GROUP")
  else
    # Independent nodes: every node reads every routed record in its own group.
    args+=(--kafka-group-id "$GROUP.$node")
  fi
  if [ -n "${CLUSTER_ROUTES:-}" ]; then args+=(--route "$CLUSTER_ROUTES"); fi
  # shellcheck disable=SC2206
  if [ -n "${CLUSTER_EXTRA_ARGS:-}" ]; then args+=($CLUSTER_EXTRA_ARGS); fi
  rm -f "$DIR/$node.ports.json"
  setsid "$bin" "${args[@]}" >>"$DIR/$node.log" 2>&1 </dev/null &
  echo $! >"$DIR/$node.pid"
}

wait_ports_file() {
  local node=$1 pid; pid="$(pid_of "$1")"
  for _ in $(seq $((READY_TIMEOUT * 10))); do
    [ -s "$DIR/$node.ports.json" ] && return 0
    alive "$pid" || { tail -n 30 "$DIR/$node.log" >&2; die "$node exited"; }
    sleep 0.1
  done
  tail -n 30 "$DIR/$node.log" >&2
  die "$node did not listen within ${READY_TIMEOUT}s"
}

json_port() { # file key -> port of "127.0.0.1:P"
  python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))[sys.argv[2]].rsplit(":",1)[1])' "$1" "$2"
}

wait_ready() {
  local node=$1 pid http; pid="$(pid_of "$1")"; http="$(cat "$DIR/$node.http_port")"
  for _ in $(seq $((READY_TIMEOUT * 10))); do
    [ "$(http_code "http://127.0.0.1:$http/readyz")" = 200 ] && return 0
    alive "$pid" || { tail -n 30 "$DIR/$node.log" >&2; die "$node exited"; }
    sleep 0.1
  done
  tail -n 30 "$DIR/$node.log" >&2
  die "$node not ready (/readyz) within ${READY_TIMEOUT}s"
}

# HAProxy server state of NODE in the stomp backend: UP / DOWN / ...
haproxy_state() {
  curl -s -m 2 "http://127.0.0.1:$(cat "$DIR/stats_port")/stats;csv" 2>/dev/null \
    | awk -F, -v n="$1" '$1=="stomp_nodes" && $2==n {print $18}'
}

wait_haproxy_up() {
  for _ in $(seq $((READY_TIMEOUT * 10))); do
    [ "$(haproxy_state "$1")" = UP ] && return 0
    sleep 0.1
  done
  die "HAProxy did not mark $1 UP within ${READY_TIMEOUT}s"
}

write_haproxy_cfg() {
  local stomp=$1 ws=$2 stats=$3 n s h
  {
    cat <<CFG
# Generated by scripts/cluster.sh — do not edit (rewritten on start).
global
    maxconn 4096
    pidfile $DIR/haproxy.pid

defaults
    mode tcp
    timeout connect 2s
    timeout client 1h
    timeout server 1h
    timeout tunnel 1h
    timeout check 1s
    # Fast failover: a node is out after 2 failed checks 500 ms apart, back after 2 good ones.
    default-server inter 500ms fastinter 250ms downinter 500ms fall 2 rise 2 on-marked-down shutdown-sessions

# STOMP over TCP.
frontend stomp
    bind 127.0.0.1:$stomp
    default_backend stomp_nodes

backend stomp_nodes
    balance leastconn
    option httpchk GET /readyz
CFG
    for n in "${NODES[@]}"; do
      s="$(cat "$DIR/$n.stomp_port")"; h="$(cat "$DIR/$n.http_port")"
      echo "    server $n 127.0.0.1:$s check port $h"
    done
    cat <<CFG

# WebSocket (and the rest of the broker's HTTP port), tunnelled in TCP mode.
frontend ws
    bind 127.0.0.1:$ws
    default_backend ws_nodes

backend ws_nodes
    balance leastconn
    option httpchk GET /readyz
CFG
    for n in "${NODES[@]}"; do
      h="$(cat "$DIR/$n.http_port")"
      echo "    server $n 127.0.0.1:$h check"
    done
    cat <<CFG

listen stats
    mode http
    bind 127.0.0.1:$stats
    stats enable
    stats uri /stats
    stats refresh 2s
CFG
  } >"$DIR/haproxy.cfg"
}

print_env() {
  cat <<ENV
CLUSTER_STOMP=127.0.0.1:$(cat "$DIR/stomp_port")
CLUSTER_WS=ws://127.0.0.1:$(cat "$DIR/ws_port")/ws
CLUSTER_HTTP=http://127.0.0.1:$(cat "$DIR/ws_port")
CLUSTER_STATS=http://127.0.0.1:$(cat "$DIR/stats_port")/stats
CLUSTER_KAFKA=$(cat "$DIR/bootstrap")
ENV
  local n
  for n in "${NODES[@]}"; do
    echo "CLUSTER_${n^^}_STOMP=127.0.0.1:$(cat "$DIR/$n.stomp_port")"
    echo "CLUSTER_${n^^}_HTTP=http://127.0.0.1:$(cat "$DIR/$n.http_port")"
  done
}

running() { alive "$(cat "$DIR/haproxy.pid" 2>/dev/null || true)"; }

cmd_start() {
  command -v haproxy >/dev/null || die "haproxy not installed (scripts/install-deps.sh installs it)"
  command -v curl >/dev/null || die "curl not installed"
  if running; then
    local n all=1
    for n in "${NODES[@]}"; do alive "$(pid_of "$n")" || all=0; done
    if [ "$all" = 1 ]; then print_env; return 0; fi
    say "partly running; restarting from scratch"
    cmd_stop
  fi
  rm -rf "$DIR"; mkdir -p "$DIR"
  if [ -n "${KAFKA_BOOTSTRAP:-}" ]; then
    # The Kafka the caller (e.g. a test) uses too.
    echo "$KAFKA_BOOTSTRAP" >"$DIR/bootstrap"
  else
    if ! bash "$ROOT/scripts/kafka.sh" status >/dev/null 2>&1; then
      say "starting Kafka (scripts/kafka.sh start)"
      bash "$ROOT/scripts/kafka.sh" start >/dev/null
    fi
    bash "$ROOT/scripts/kafka.sh" bootstrap >"$DIR/bootstrap"
  fi
  broker_bin >"$DIR/bin"
  local n
  for n in "${NODES[@]}"; do start_node "$n" 0 0; done
  for n in "${NODES[@]}"; do
    wait_ports_file "$n"
    json_port "$DIR/$n.ports.json" stomp >"$DIR/$n.stomp_port"
    json_port "$DIR/$n.ports.json" http >"$DIR/$n.http_port"
  done
  echo "${CLUSTER_STOMP_PORT:-$(free_port)}" >"$DIR/stomp_port"
  echo "${CLUSTER_WS_PORT:-$(free_port)}" >"$DIR/ws_port"
  echo "${CLUSTER_STATS_PORT:-$(free_port)}" >"$DIR/stats_port"
  for n in "${NODES[@]}"; do wait_ready "$n"; done
  write_haproxy_cfg "$(cat "$DIR/stomp_port")" "$(cat "$DIR/ws_port")" "$(cat "$DIR/stats_port")"
  haproxy -c -q -f "$DIR/haproxy.cfg" || die "bad generated $DIR/haproxy.cfg"
  haproxy -D -f "$DIR/haproxy.cfg" >"$DIR/haproxy.log" 2>&1 </dev/null \
    || { cat "$DIR/haproxy.log" >&2; die "haproxy failed to start"; }
  for n in "${NODES[@]}"; do wait_haproxy_up "$n"; done
  print_env >"$DIR/env"
  say "up: STOMP 127.0.0.1:$(cat "$DIR/stomp_port"), WebSocket ws://127.0.0.1:$(cat "$DIR/ws_port")/ws, stats http://127.0.0.1:$(cat "$DIR/stats_port")/stats"
  print_env
}

stop_pid() {
  local pid=$1
  alive "$pid" || return 0
  kill -TERM "$pid" 2>/dev/null || true
  for _ in $(seq 100); do alive "$pid" || return 0; sleep 0.1; done
  kill -KILL "$pid" 2>/dev/null || true
}

cmd_stop() {
  [ -d "$DIR" ] || return 0
  stop_pid "$(cat "$DIR/haproxy.pid" 2>/dev/null || true)"
  local n
  for n in "${NODES[@]}"; do stop_pid "$(pid_of "$n")"; done
  rm -rf "$DIR"
  say "stopped"
}

check_node() {
  local n
  for n in "${NODES[@]}"; do [ "$n" = "${1:-}" ] && return 0; done
  die "unknown node '${1:-}' (node1, node2 or node3)"
}

cmd_kill() {
  check_node "${1:-}"
  local pid; pid="$(pid_of "$1")"
  alive "$pid" || die "$1 is not running"
  kill -KILL "$pid"
  for _ in $(seq 100); do alive "$pid" || break; sleep 0.05; done
  say "killed $1 (pid $pid)"
}

cmd_restart() {
  check_node "${1:-}"
  [ -f "$DIR/bin" ] || die "cluster not started"
  local pid; pid="$(pid_of "$1")"
  if alive "$pid"; then stop_pid "$pid"; fi
  start_node "$1" "$(cat "$DIR/$1.stomp_port")" "$(cat "$DIR/$1.http_port")"
  wait_ports_file "$1"
  wait_ready "$1"
  wait_haproxy_up "$1"
  say "$1 restarted (pid $(pid_of "$1")), ready and UP in HAProxy"
}

cmd_status() {
  if [ ! -f "$DIR/bin" ]; then echo "stopped"; return 3; fi
  local rc=0 n pid state ready
  for n in "${NODES[@]}"; do
    pid="$(pid_of "$n")"
    if alive "$pid"; then state="running pid $pid"; else state="dead"; rc=3; fi
    ready="$(http_code "http://127.0.0.1:$(cat "$DIR/$n.http_port")/readyz")"
    [ "$ready" = 200 ] || rc=3
    printf '%s: %s stomp=127.0.0.1:%s http=127.0.0.1:%s readyz=%s haproxy=%s\n' "$n" "$state" \
      "$(cat "$DIR/$n.stomp_port")" "$(cat "$DIR/$n.http_port")" "${ready:-none}" \
      "$(haproxy_state "$n" || true)"
  done
  if running; then
    echo "haproxy: running pid $(cat "$DIR/haproxy.pid") stomp=127.0.0.1:$(cat "$DIR/stomp_port") ws=ws://127.0.0.1:$(cat "$DIR/ws_port")/ws stats=http://127.0.0.1:$(cat "$DIR/stats_port")/stats"
  else
    echo "haproxy: dead"; rc=3
  fi
  return "$rc"
}

case "${1:-}" in
  start) cmd_start ;;
  stop) cmd_stop ;;
  kill) cmd_kill "${2:-}" ;;
  restart) cmd_restart "${2:-}" ;;
  status) cmd_status ;;
  env) [ -f "$DIR/env" ] || die "cluster not started"; cat "$DIR/env" ;;
  *) sed -n '2,30p' "$0" >&2; exit 2 ;;
esac
