#!/usr/bin/env bash
# Usage: scripts/demo.sh
#
# The whole pipeline on this machine, end to end: makes sure PostgreSQL,
# Redis and RabbitMQ run (scripts/services.sh), starts a real SMTP server
# (scripts/smtp-sink.sh), builds ordctl, then migrates, seeds users, places
# orders, lets a worker e-mail every confirmation, shows the status, and shows
# the e-mails that arrived.
#
# It uses ordctl's defaults (database `ordctl`, namespace `ordctl`, the local
# services), so ordctl commands you type afterwards see the same data; running
# it again adds more orders. The services and the SMTP sink keep running;
# `scripts/smtp-sink.sh stop` stops the sink.

set -euo pipefail
# shellcheck source=scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$ROOT"

sink_port=2525
maildir="$ROOT/var/maildir"

require_cargo
scripts/services.sh
scripts/smtp-sink.sh start "$sink_port" "$maildir"
run cargo build --release

# From here on `ordctl` is the binary just built, and it sends mail to the sink.
export PATH="$ROOT/target/release:$PATH"
export SMTP_URL="smtp://127.0.0.1:$sink_port"
log "SMTP_URL=$SMTP_URL"

mail_count() {
  if [[ -d $maildir/new ]]; then find "$maildir/new" -type f | wc -l; else echo 0; fi
}
mail_before=$(mail_count)

run ordctl migrate
run ordctl seed
run ordctl place-order --user 3 --amount 42
run ordctl place-order --user 1 --amount 19.99 --currency EUR
run ordctl place-order --json --user 2 --amount 7.50
run ordctl place-order --count 200 --concurrency 4
run ordctl worker --exit-when-idle 3
run ordctl status

mail_after=$(mail_count)
printf '\nThe SMTP sink holds %d messages in %s/new (%d from this run). The newest:\n' \
  "$mail_after" "${maildir#"$ROOT"/}" "$((mail_after - mail_before))"
if [[ -d $maildir/new ]]; then
  # (awk and sed read their whole input, so no writer dies of SIGPIPE.)
  find "$maildir/new" -type f -printf '%T@ %p\n' | sort -rn |
    awk 'NR <= 2 { sub(/^[^ ]* /, ""); print }' |
    while read -r message; do
      printf '\n%s\n' "${message#"$ROOT"/}"
      # Header lines only: from the top to the first empty line.
      tr -d '\r' <"$message" | sed -n '1,/^$/p' | grep -iE '^(Subject|To|Message-ID):' |
        sed 's/^/  /' || true
    done
fi

log "done: try 'target/release/ordctl status --json' or 'target/release/ordctl tail-queue';" \
  "'scripts/smtp-sink.sh stop' stops the SMTP sink"
