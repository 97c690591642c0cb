#!/usr/bin/env bash
# Usage: scripts/bench.sh [ORDCTL BENCH ARGS...]
#   e.g. scripts/bench.sh --orders 20000 --concurrency 4 --json
#        scripts/bench.sh --http-only   (just `ordctl serve` under wrk)
#        scripts/bench.sh --replay-only (just replay-dlq moving a backlog)
#        scripts/bench.sh --latency-only [--latency-rate R]
#            (just commit → SMTP 250 at half the sustained rate, or at R)
#        scripts/bench.sh --cluster [--cluster-only]
#            (also the queue types side by side: classic and quorum on one
#            node, quorum on the local three-node cluster, which
#            scripts/cluster.sh starts; pass --cluster URLS for another)
#
# Reproduces the figures in BENCHMARKS.md: makes sure the services and
# Postfix's smtp-sink (a fast, real SMTP server that accepts and discards
# mail) are there (scripts/services.sh), installs wrk (the HTTP section's
# load generator), builds the release
# binary, starts smtp-sink on a free loopback port and runs
# `ordctl bench` against it. `ordctl bench` makes its own throw-away database
# and namespace and removes them at the end, so no user data is touched.
# The figures go to stdout (a table, or JSON with --json); progress to
# stderr. The sink is stopped when the script exits, however it exits.

set -euo pipefail
# shellcheck source=scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$ROOT"

SINK=/usr/sbin/smtp-sink

# free_port — a loopback TCP port nothing listens on, from the ephemeral range.
free_port() {
  local port
  for _ in $(seq 100); do
    port=$((20000 + RANDOM % 20000))
    port_open 127.0.0.1 "$port" || {
      printf '%s' "$port"
      return
    }
  done
  die "found no free loopback port"
}

require_cargo
# Also installs Postfix's smtp-sink (package postfix).
scripts/services.sh >/dev/null
[[ -x $SINK ]] || die "postfix is installed but $SINK is missing"
# wrk: the HTTP load generator of the benchmark's HTTP section.
apt_install wrk
run cargo build --release --quiet

port=$(free_port)
# -u nobody: smtp-sink drops root privileges to this user (it refuses to run
# as root otherwise). The last argument is the listen backlog.
sink_user=()
[[ $(id -u) -eq 0 ]] && sink_user=(-u nobody)
"$SINK" "${sink_user[@]}" "127.0.0.1:$port" 1000 &
sink_pid=$!
trap 'kill "$sink_pid" 2>/dev/null || true' EXIT
wait_for_port 127.0.0.1 "$port" 10 smtp-sink
log "smtp-sink (pid $sink_pid) listening on 127.0.0.1:$port"

# A bare --cluster (no URL list after it) means the local cluster, handed
# over in the environment (ORDCTL_BENCH_CLUSTER), not on the command line.
args=()
for ((i = 1; i <= $#; i++)); do
  arg=${!i}
  next_i=$((i + 1))
  next=${!next_i:-}
  if [[ $arg == --cluster && (-z $next || $next == -*) ]]; then
    urls=$(scripts/cluster.sh start | sed -n "s/^export AMQP_URL='\(.*\)'$/\1/p")
    [[ -n $urls ]] || die "scripts/cluster.sh start printed no AMQP_URL"
    export ORDCTL_BENCH_CLUSTER=$urls
  else
    args+=("$arg")
  fi
done

# Not exec: the EXIT trap must stop the sink after the benchmark.
SMTP_URL="smtp://127.0.0.1:$port" run target/release/ordctl bench ${args[@]+"${args[@]}"}
