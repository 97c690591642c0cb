#!/usr/bin/env bash
# Usage: scripts/smtp-sink.sh start|stop|status [PORT] [MAILDIR]
#
# A real SMTP server for the demo: aiosmtpd's Mailbox handler listening on
# 127.0.0.1:PORT (default 2525), storing every message it accepts as a file in
# the Maildir MAILDIR (default ./var/maildir; new mail lands in MAILDIR/new).
# It runs in the background; its pid file and log are var/smtp-sink-PORT.pid
# and var/smtp-sink-PORT.log in the repository. Point ordctl at it with
#   SMTP_URL=smtp://127.0.0.1:2525
# `start` when it already runs and `stop` when it does not are no-ops.
# Needs Debian's python3-aiosmtpd (scripts/services.sh installs it).

set -euo pipefail
# shellcheck source=scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

usage() {
  echo "usage: scripts/smtp-sink.sh start|stop|status [PORT] [MAILDIR]" >&2
  exit 2
}

(($# >= 1 && $# <= 3)) || usage
action=$1
port=${2:-2525}
[[ $port =~ ^[0-9]+$ ]] || usage
maildir=$(realpath -m "${3:-$ROOT/var/maildir}")
pidfile="$ROOT/var/smtp-sink-$port.pid"
logfile="$ROOT/var/smtp-sink-$port.log"

# Prints the pid of our sink when it is alive; fails (and drops a stale pid
# file) otherwise. The command line must be aiosmtpd's, so a reused pid is
# never mistaken for the sink.
sink_pid() {
  local pid
  [[ -f $pidfile ]] || return 1
  pid=$(<"$pidfile")
  if [[ $pid =~ ^[0-9]+$ ]] && tr '\0' ' ' 2>/dev/null <"/proc/$pid/cmdline" | grep -q aiosmtpd; then
    printf '%s' "$pid"
    return 0
  fi
  rm -f "$pidfile"
  return 1
}

# The Maildir a running sink writes to: the last argument of its command line.
sink_maildir() { tr '\0' '\n' <"/proc/$1/cmdline" | tail -n1; }

start() {
  local pid
  if pid=$(sink_pid); then
    log "already running (pid $pid) on 127.0.0.1:$port, Maildir $(sink_maildir "$pid")"
    [[ $(sink_maildir "$pid") == "$maildir" ]] ||
      log "warning: it writes to $(sink_maildir "$pid"), not $maildir; stop it first to change"
    return
  fi
  if port_open 127.0.0.1 "$port"; then
    log "warning: something not started by this script already listens on 127.0.0.1:$port; leaving it alone (mail will not land in $maildir)"
    return
  fi
  /usr/bin/python3 -c 'import aiosmtpd' 2>/dev/null ||
    die "/usr/bin/python3 with aiosmtpd is missing: run scripts/services.sh (Debian package python3-aiosmtpd)"
  mkdir -p "$ROOT/var" "$(dirname "$maildir")"
  # Debian's python3, explicitly: the python3 first on PATH may be another
  # one (pyenv) that cannot see Debian's packages. -n: do not setuid nobody.
  nohup /usr/bin/python3 -m aiosmtpd -n -l "127.0.0.1:$port" \
    -c aiosmtpd.handlers.Mailbox "$maildir" >"$logfile" 2>&1 </dev/null &
  pid=$!
  echo "$pid" >"$pidfile"
  local waited=0
  until port_open 127.0.0.1 "$port"; do
    if ! kill -0 "$pid" 2>/dev/null || ((waited >= 50)); then
      kill "$pid" 2>/dev/null || true
      rm -f "$pidfile"
      die "SMTP sink did not start on 127.0.0.1:$port; its log ($logfile) says: $(tail -n 5 "$logfile")"
    fi
    sleep 0.2
    waited=$((waited + 1))
  done
  log "started (pid $pid) on 127.0.0.1:$port, Maildir $maildir"
}

stop() {
  local pid
  if ! pid=$(sink_pid); then
    log "not running on port $port (no live pid in $pidfile)"
    return
  fi
  kill "$pid"
  local waited=0
  while kill -0 "$pid" 2>/dev/null; do
    if ((waited >= 50)); then
      die "SMTP sink (pid $pid) did not exit within 10s of SIGTERM"
    fi
    sleep 0.2
    waited=$((waited + 1))
  done
  rm -f "$pidfile"
  log "stopped (pid $pid) on 127.0.0.1:$port"
}

status() {
  local pid
  if pid=$(sink_pid); then
    log "running (pid $pid) on 127.0.0.1:$port, Maildir $(sink_maildir "$pid")"
  else
    log "not running on port $port"
    return 1
  fi
}

case "$action" in
  start) start ;;
  stop) stop ;;
  status) status ;;
  *) usage ;;
esac
