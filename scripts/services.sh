#!/usr/bin/env bash
# Usage: scripts/services.sh
#
# Makes this machine ready to build, test and demo ordctl, and is a no-op
# when it already is:
#   - build dependencies of the crates (gcc, libc6-dev, pkg-config, libpq-dev,
#     libssl-dev), the test SMTP server (python3-aiosmtpd) and Postfix's
#     smtp-sink (package postfix) for the fault suite and the benchmark;
#     chromium and chromium-driver for the dashboard's browser test;
#   - PostgreSQL on 127.0.0.1:5432, Redis on 127.0.0.1:6379 and RabbitMQ on
#     127.0.0.1:5672: each one not answering is installed from Debian's
#     packages if needed, started WITHOUT systemd (containers have none) and
#     waited for;
#   - RabbitMQ's management plugin, on a node running on this machine, so
#     that `ordctl status` and `ordctl doctor` can show unacked counts.
# Apart from that plugin, a service already answering is used as it is: its
# configuration is never touched. A service whose URL (DATABASE_URL, REDIS_URL, AMQP_URL) points to
# another host is skipped; a local URL means the default loopback port.
# Prints one result line per item on stdout; progress goes to stderr.

set -euo pipefail
# shellcheck source=scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

# report ITEM TEXT — the one result line for an item.
report() { printf '%-12s %s\n' "$1" "$2"; }

# skip_remote ITEM VAR URL — report and succeed when URL is not on this machine.
skip_remote() {
  if is_local_url "$3"; then
    return 1
  fi
  report "$1" "skipped: $2 points to $(url_host "$3")"
}

ensure_packages() {
  local item=$1 missing
  shift
  missing=$(missing_packages "$@")
  if [[ -z $missing ]]; then
    report "$item" "already installed ($*)"
    return
  fi
  apt_install "$@"
  report "$item" "installed ($missing)"
}

# Adds `trust` for loopback TCP logins at the top of pg_hba.conf (first match
# wins), so the tool's default URL postgres://postgres@127.0.0.1:5432/ordctl
# works without a password. This is a dev/CI setup, not one for production,
# and it is only done to a cluster this script has just installed.
trust_loopback() {
  local hba="/etc/postgresql/$1/main/pg_hba.conf" marker="# ordctl scripts/services.sh"
  if as_root grep -qF "$marker" "$hba"; then
    return
  fi
  log "pg_hba.conf: trusting loopback TCP connections (dev/CI setup)"
  local tmp
  tmp=$(mktemp)
  {
    printf '%s\n' "$marker: dev/CI only, passwordless loopback TCP logins"
    printf 'host    all    all    127.0.0.1/32    trust\n'
    printf 'host    all    all    ::1/128         trust\n\n'
    as_root cat "$hba"
  } >"$tmp"
  as_root cp "$tmp" "$hba" # cp onto the file keeps its owner and mode
  rm -f "$tmp"
}

ensure_postgres() {
  local url=${DATABASE_URL:-postgres://postgres@127.0.0.1:5432/ordctl}
  skip_remote postgresql DATABASE_URL "$url" && return
  if port_open 127.0.0.1 5432; then
    report postgresql "already running on 127.0.0.1:5432"
    return
  fi
  local how="started on 127.0.0.1:5432 (was installed, not running)" fresh=""
  if ! is_installed postgresql; then
    apt_install postgresql
    how="installed and started on 127.0.0.1:5432"
    fresh=1
  fi
  local version
  version=$(find /etc/postgresql -mindepth 1 -maxdepth 1 -printf '%f\n' 2>/dev/null | sort -V | tail -n1)
  if [[ -z $version ]]; then
    version=$(find /usr/lib/postgresql -mindepth 1 -maxdepth 1 -printf '%f\n' | sort -V | tail -n1)
    log "creating PostgreSQL $version cluster 'main'"
    as_root pg_createcluster "$version" main >&2
  fi
  if [[ -n $fresh ]]; then
    trust_loopback "$version"
  fi
  # The package's postinst may have started the cluster where the init system
  # let it; then a reload picks up pg_hba.conf.
  if as_root pg_ctlcluster "$version" main status >/dev/null 2>&1; then
    as_root pg_ctlcluster --skip-systemctl-redirect "$version" main reload
  else
    log "starting PostgreSQL $version"
    as_root pg_ctlcluster --skip-systemctl-redirect "$version" main start
  fi
  wait_for_port 127.0.0.1 5432 60 PostgreSQL
  psql -h 127.0.0.1 -U postgres -w -d postgres -Atc 'select 1' >/dev/null ||
    die "PostgreSQL on 127.0.0.1:5432 refuses a passwordless login as postgres:" \
      "allow it in /etc/postgresql/$version/main/pg_hba.conf or put a password in DATABASE_URL"
  report postgresql "$how"
}

ensure_redis() {
  local url=${REDIS_URL:-redis://127.0.0.1:6379/0}
  skip_remote redis REDIS_URL "$url" && return
  if port_open 127.0.0.1 6379; then
    report redis "already running on 127.0.0.1:6379"
    return
  fi
  local how="started on 127.0.0.1:6379 (was installed, not running)"
  if ! is_installed redis-server; then
    apt_install redis-server
    how="installed and started on 127.0.0.1:6379"
  fi
  # The package's own start may have run; if not, start it without systemd,
  # as a cache that keeps nothing on disk.
  if ! port_open 127.0.0.1 6379; then
    log "starting Redis"
    as_root mkdir -p /var/lib/redis /var/log/redis
    as_root redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 \
      --save "" --appendonly no --dir /var/lib/redis --logfile /var/log/redis/ci.log
  fi
  wait_for_port 127.0.0.1 6379 30 Redis
  report redis "$how"
}

ensure_rabbitmq() {
  local url=${AMQP_URL:-amqp://guest:guest@127.0.0.1:5672/%2f}
  skip_remote rabbitmq AMQP_URL "$url" && return
  if port_open 127.0.0.1 5672; then
    report rabbitmq "already running on 127.0.0.1:5672"
    ensure_rabbitmq_management
    return
  fi
  local how="started on 127.0.0.1:5672 (was installed, not running)"
  if ! is_installed rabbitmq-server; then
    apt_install rabbitmq-server
    how="installed and started on 127.0.0.1:5672"
  fi
  if ! port_open 127.0.0.1 5672; then
    # The wrapper drops to the rabbitmq user; the node needs ~10-30 s to boot.
    log "starting RabbitMQ (this takes a while)"
    as_root rabbitmq-server -detached
  fi
  wait_for_port 127.0.0.1 5672 180 RabbitMQ
  report rabbitmq "$how"
  ensure_rabbitmq_management
}

# The management plugin serves the HTTP API (port 15672) that `ordctl status`
# reads unacked counts from. Enabling it on a running node is online and
# idempotent; a broker in a container or elsewhere (no rabbitmq-plugins
# here) is left as it is.
ensure_rabbitmq_management() {
  if ! command -v rabbitmq-plugins >/dev/null && ! [[ -x /usr/sbin/rabbitmq-plugins ]]; then
    report rabbitmq-mgmt "skipped: rabbitmq-plugins is not installed here"
    return
  fi
  if as_root rabbitmq-plugins list --enabled --minimal 2>/dev/null | grep -qx rabbitmq_management; then
    report rabbitmq-mgmt "already enabled (http://127.0.0.1:15672)"
    return
  fi
  log "enabling RabbitMQ's management plugin"
  as_root rabbitmq-plugins enable --quiet rabbitmq_management >&2
  wait_for_port 127.0.0.1 15672 60 "RabbitMQ management"
  report rabbitmq-mgmt "enabled (http://127.0.0.1:15672)"
}

ensure_packages build-deps gcc libc6-dev pkg-config libpq-dev libssl-dev
ensure_packages aiosmtpd python3-aiosmtpd
# Debian's python3, not whatever python3 comes first on PATH (e.g. pyenv's).
/usr/bin/python3 -c 'import aiosmtpd' ||
  die "/usr/bin/python3 cannot import aiosmtpd although python3-aiosmtpd is installed"
# Postfix's smtp-sink: the fault suite's SMTP server that answers 4xx/5xx on
# demand, and the benchmark's fast one. "No configuration" keeps the package
# from setting up a mail server of its own.
if ! is_installed postfix && command -v debconf-set-selections >/dev/null; then
  echo 'postfix postfix/main_mailer_type select No configuration' | as_root debconf-set-selections
fi
ensure_packages smtp-sink postfix
# Headless Chromium and its WebDriver: the dashboard's browser test (tests/dashboard.rs).
ensure_packages browser chromium chromium-driver
ensure_postgres
ensure_redis
ensure_rabbitmq
