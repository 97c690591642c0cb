#!/usr/bin/env bash
# Usage: scripts/cluster.sh start|stop|status|kill N|destroy
#
# A three-node RabbitMQ cluster on this machine, without Docker, to try
# quorum queues and failover: nodes ordctl-1@localhost … ordctl-3@localhost
# on AMQP ports 5681-5683 (management API 15681-15683, Erlang distribution
# 25681-25683), each with its own data and log directory under
# $ORDCTL_CLUSTER_DIR (default /var/tmp/ordctl-cluster) and one Erlang cookie
# of their own, so a RabbitMQ already running here (5672) is never touched.
#
#   start   installs rabbitmq-server if missing, starts the nodes that are not
#           running, joins them into one cluster and prints, on stdout, the
#           settings to use it:  eval "$(scripts/cluster.sh start)"
#   stop    stops these three nodes (and only them)
#   status  each node: running or not, and the cluster's running members
#   kill N  SIGKILLs node N (1-3), as a crash would; `start` brings it back
#   destroy stops the nodes and deletes their data, logs and cookie
#
# Idempotent: `start` on a running cluster only prints the settings again.
# $ORDCTL_CLUSTER_PORT moves the AMQP ports (default 5681: 5681, 5682, 5683)
# and $ORDCTL_CLUSTER_NAME the node names (default ordctl: ordctl-1@localhost),
# so a second cluster (the fault suite's) can run beside the first.

source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

DIR=${ORDCTL_CLUSTER_DIR:-/var/tmp/ordctl-cluster}
BASE_PORT=${ORDCTL_CLUSTER_PORT:-5681}
NAME=${ORDCTL_CLUSTER_NAME:-ordctl}
NODES=(1 2 3)

node_name() { printf '%s-%s@localhost' "$NAME" "$1"; }
amqp_port() { printf '%s' $((BASE_PORT + $1 - 1)); }
node_dir() { printf '%s/node-%s' "$DIR" "$1"; }

# The cluster's own Erlang cookie, made once. The nodes get it with
# -setcookie and the CLI with --erlang-cookie, so the cookie file of the
# rabbitmq user (which the machine's own node uses) is never read or written.
# -setcookie shows in the process list: fine for a cluster on loopback made
# for trying things, not for one that holds anything worth protecting.
cookie() {
  if [[ ! -s $DIR/cookie ]]; then
    as_root mkdir -p "$DIR"
    head -c 30 /dev/urandom | base64 | tr -dc 'A-Za-z0-9' | as_root tee "$DIR/cookie" >/dev/null
    as_root chmod 600 "$DIR/cookie"
  fi
  as_root cat "$DIR/cookie"
}

# ctl N ARGS... — rabbitmqctl against node N, quietly.
ctl() {
  local n=$1
  shift
  as_root rabbitmqctl --erlang-cookie "$(cookie)" -n "$(node_name "$n")" "$@"
}

running() { ctl "$1" ping >/dev/null 2>&1; }

# Everything a node reads from its environment: name, ports, files.
node_env() {
  local n=$1 dir
  dir=$(node_dir "$n")
  printf '%s\n' \
    "RABBITMQ_NODENAME=$(node_name "$n")" \
    "RABBITMQ_NODE_PORT=$(amqp_port "$n")" \
    "RABBITMQ_DIST_PORT=$(($(amqp_port "$n") + 20000))" \
    "RABBITMQ_CONFIG_FILE=$dir/rabbitmq.conf" \
    "RABBITMQ_ENABLED_PLUGINS_FILE=$dir/enabled_plugins" \
    "RABBITMQ_MNESIA_BASE=$dir/mnesia" \
    "RABBITMQ_LOG_BASE=$dir/log" \
    "RABBITMQ_PID_FILE=$dir/pid" \
    "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS=-setcookie $(cookie)"
}

start_node() {
  local n=$1 dir port
  dir=$(node_dir "$n")
  port=$(amqp_port "$n")
  if running "$n"; then
    log "node $n ($(node_name "$n")) already running on $port"
    return
  fi
  port_open 127.0.0.1 "$port" && die "port $port is taken by another program: set ORDCTL_CLUSTER_PORT"
  as_root mkdir -p "$dir"
  # The management API listens on the AMQP port + 10000, where ordctl
  # looks for it; the node's own loopback listeners only.
  printf '%s\n' \
    "listeners.tcp.local = 127.0.0.1:$port" \
    "management.tcp.ip = 127.0.0.1" \
    "management.tcp.port = $((port + 10000))" \
    "loopback_users.guest = true" | as_root tee "$dir/rabbitmq.conf" >/dev/null
  echo '[rabbitmq_management].' | as_root tee "$dir/enabled_plugins" >/dev/null
  as_root chown -R rabbitmq:rabbitmq "$dir"
  log "starting node $n ($(node_name "$n")) on $port (logs: $dir/log)"
  local vars=()
  mapfile -t vars < <(node_env "$n")
  # From / (the rabbitmq user cannot read every working directory).
  (cd / && as_root env "${vars[@]}" rabbitmq-server -detached >/dev/null)
}

# Waits until node N answers and has booted; `-detached` returns before the
# node even registers.
await_node() {
  local n=$1 waited=0
  until ctl "$n" await_startup --timeout 10 >/dev/null 2>&1; do
    ((waited < 180)) || die "node $n did not start within 180s: see $(node_dir "$n")/log"
    sleep 2
    waited=$((waited + 2))
  done
  wait_for_port 127.0.0.1 "$(amqp_port "$n")" 30 "node $n"
}

# Joins node N to node 1's cluster unless it is a member already.
join_node() {
  local n=$1 first
  first=$(node_name 1)
  if ctl "$n" cluster_status --formatter json 2>/dev/null | grep -q "\"$first\""; then
    return
  fi
  log "joining node $n to $first"
  local step out
  for step in stop_app reset "join_cluster $first" start_app; do
    # shellcheck disable=SC2086 # the step is a command and its argument
    out=$(ctl "$n" $step 2>&1) || die "node $n: rabbitmqctl $step failed: $out"
  done
}

amqp_urls() {
  local n urls=()
  for n in "${NODES[@]}"; do
    urls+=("amqp://guest:guest@127.0.0.1:$(amqp_port "$n")/%2f")
  done
  (
    IFS=,
    printf '%s' "${urls[*]}"
  )
}

start() {
  apt_install rabbitmq-server
  # A node that was stopped while clustered waits for its peers at boot:
  # start all before waiting for any.
  local n
  for n in "${NODES[@]}"; do start_node "$n"; done
  for n in "${NODES[@]}"; do await_node "$n"; done
  for n in "${NODES[@]:1}"; do join_node "$n"; done
  log "cluster running: $(ctl 1 cluster_status --formatter json | running_members)"
  printf "export AMQP_URL='%s'\n" "$(amqp_urls)"
  printf 'export ORDCTL_QUEUE_TYPE=quorum\n'
}

running_members() {
  python3 -c 'import json,sys; print(" ".join(sorted(json.load(sys.stdin)["running_nodes"])))'
}

stop() {
  local n
  for n in "${NODES[@]}"; do
    if running "$n"; then
      log "stopping node $n ($(node_name "$n"))"
      ctl "$n" stop >/dev/null
    else
      log "node $n not running"
    fi
  done
}

status() {
  local n state=0
  for n in "${NODES[@]}"; do
    if running "$n"; then
      printf '%s  running  amqp://127.0.0.1:%s  http://127.0.0.1:%s\n' \
        "$(node_name "$n")" "$(amqp_port "$n")" $(($(amqp_port "$n") + 10000))
    else
      printf '%s  stopped\n' "$(node_name "$n")"
      state=3
    fi
  done
  for n in "${NODES[@]}"; do
    if running "$n"; then
      printf 'cluster members running: %s\n' "$(ctl "$n" cluster_status --formatter json | running_members)"
      break
    fi
  done
  printf 'AMQP_URL=%s\n' "$(amqp_urls)"
  return "$state"
}

kill_node() {
  local n=${1:-}
  [[ $n =~ ^[123]$ ]] || {
    echo "usage: scripts/cluster.sh kill 1|2|3" >&2
    exit 2
  }
  local pid
  pid=$(as_root cat "$(node_dir "$n")/pid" 2>/dev/null) || die "node $n has no pid file: not started"
  log "SIGKILL node $n ($(node_name "$n"), pid $pid)"
  as_root kill -9 "$pid" 2>/dev/null || log "node $n was not running"
}

destroy() {
  stop
  log "deleting $DIR"
  as_root rm -rf "$DIR"
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  status) status ;;
  kill) kill_node "${2:-}" ;;
  destroy) destroy ;;
  *)
    echo "usage: scripts/cluster.sh start|stop|status|kill N|destroy" >&2
    exit 2
    ;;
esac
