#!/usr/bin/env bash
# Usage: source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"   (from a script in scripts/)
#
# Shared helpers for the scripts in this folder; each idea lives here once.
# Sourcing sets ROOT (the repository root) and the strict shell options.
# Messages go to stderr, so a script's stdout stays its result.

set -euo pipefail

if [[ ${BASH_SOURCE[0]} == "$0" ]]; then
  echo "usage: source scripts/lib.sh from another script; it only defines helpers" >&2
  exit 2
fi

# shellcheck disable=SC2034 # used by the scripts that source this file
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
SCRIPT_NAME="$(basename "$0")"

# log MESSAGE... — a progress line on stderr, prefixed with the script's name.
log() { printf '[%s] %s\n' "$SCRIPT_NAME" "$*" >&2; }

# die MESSAGE... — one line saying what is wrong, then exit 1.
die() {
  printf '[%s] error: %s\n' "$SCRIPT_NAME" "$*" >&2
  exit 1
}

# run CMD ARGS... — show the command (as a reader would type it), then run it.
run() {
  printf '\n$ %s\n' "$*" >&2
  "$@"
}

# as_root CMD ARGS... — run as root: directly when we are root, else via sudo.
as_root() {
  if [[ $(id -u) -eq 0 ]]; then
    "$@"
  elif command -v sudo >/dev/null; then
    sudo "$@"
  else
    die "need root for: $* (run as root or install sudo)"
  fi
}

# port_open HOST PORT — true when a TCP connect succeeds within 1 second.
port_open() {
  # shellcheck disable=SC2016 # $1 and $2 expand in the inner bash
  timeout 1 bash -c 'exec 3<>"/dev/tcp/$1/$2"' _ "$1" "$2" 2>/dev/null
}

# wait_for_port HOST PORT SECONDS NAME — poll until the port answers, or die.
wait_for_port() {
  local host=$1 port=$2 secs=$3 name=$4 waited=0
  until port_open "$host" "$port"; do
    if ((waited >= secs)); then
      die "$name did not start listening on $host:$port within ${secs}s"
    fi
    sleep 1
    waited=$((waited + 1))
  done
}

# is_installed PKG — true when the Debian package is installed.
is_installed() {
  [[ $(dpkg-query -W -f='${Status}' "$1" 2>/dev/null) == "install ok installed" ]]
}

# missing_packages PKG... — print the ones not installed, space-separated.
missing_packages() {
  local missing=() pkg
  for pkg in "$@"; do
    is_installed "$pkg" || missing+=("$pkg")
  done
  printf '%s' "${missing[*]}"
}

# apt_install PKG... — install the packages that are missing, non-interactively.
# `apt-get update` runs at most once per run, including nested scripts (the
# marker is exported). Prints nothing and touches nothing if all are present.
apt_install() {
  local missing
  read -r -a missing <<<"$(missing_packages "$@")"
  ((${#missing[@]})) || return 0
  command -v apt-get >/dev/null ||
    die "apt-get not found: install ${missing[*]} (or their equivalents) yourself"
  if [[ -z ${ORDCTL_APT_UPDATED:-} ]]; then
    log "apt-get update"
    as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq
    export ORDCTL_APT_UPDATED=1
  fi
  log "apt-get install ${missing[*]}"
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
    --no-install-recommends \
    -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold \
    "${missing[@]}" >&2
}

# url_host URL — the host part of a URL (no user, password, port or brackets).
url_host() {
  local rest=${1#*://}
  rest=${rest%%[/?#]*}
  rest=${rest##*@}
  if [[ $rest == \[* ]]; then
    rest=${rest#\[}
    rest=${rest%%]*}
  else
    rest=${rest%%:*}
  fi
  printf '%s' "$rest"
}

# is_local_url URL — true for loopback hosts, and for no host (a Unix socket).
is_local_url() {
  case "$(url_host "$1")" in
    "" | localhost | 127.* | ::1) return 0 ;;
    *) return 1 ;;
  esac
}

# require_cargo — make cargo reachable (rustup's env file) or fail in one line.
require_cargo() {
  if ! command -v cargo >/dev/null && [[ -f ${CARGO_HOME:-$HOME/.cargo}/env ]]; then
    # shellcheck source=/dev/null
    source "${CARGO_HOME:-$HOME/.cargo}/env"
  fi
  command -v cargo >/dev/null ||
    die "cargo not found: install the Rust toolchain with rustup (https://rustup.rs), then re-run"
}
