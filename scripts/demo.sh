#!/usr/bin/env bash
# Usage: scripts/demo.sh
#
# The whole pipeline on this machine, end to end: makes sure PostgreSQL,
# Redis and RabbitMQ run (scripts/services.sh), starts a real SMTP server
# (scripts/smtp-sink.sh), builds ordctl, then runs the whole order system:
# migrates, seeds users, adds products, places orders with items (one takes a
# product below its low-stock threshold, one is declined by the simulated
# payment gateway), lets a worker charge, e-mail and alert, moves an order to
# `shipped`, and shows the orders, stock, status and the e-mails that arrived.
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

# The value of FIELD in the JSON object on standard input.
field() { python3 -c 'import json, sys; print(json.load(sys.stdin)[sys.argv[1]])' "$1"; }

run ordctl migrate
run ordctl seed
# Stock 20: the low-stock threshold defaults to half of it, 10.
widget=$(ordctl product add --name Widget --price 12.50 --stock 20 --json | field id)
# The simulated payment gateway declines every amount whose cents are 13.
gift=$(ordctl product add --name "Gift card" --price 10.13 --stock 5 --json | field id)
run ordctl product list

first=$(ordctl place-order --json --user 3 --item "$widget"x2 | field order_id)
log "order $first: 2 widgets (stock 20 -> 18)"
run ordctl place-order --user 2 --item "$widget"x9     # 18 -> 9: below 10, staff are alerted
run ordctl place-order --user 4 --item "$gift"          # 10.13: declined, cancelled, stock back
run ordctl place-order --user 1 --amount 19.99 --currency EUR
# 200 more, spread over the users with varied amounts (the few whose cents
# are 13 are declined too).
run ordctl place-order --count 200 --concurrency 4
run ordctl worker --exit-when-idle 3

run ordctl order set-status "$first" shipped
run ordctl worker --exit-when-idle 2
run ordctl order show "$first"
run ordctl product list
run ordctl status

mail_after=$(mail_count)
printf '\nThe SMTP sink holds %d messages in %s/new (%d from this run).\n' \
  "$mail_after" "${maildir#"$ROOT"/}" "$((mail_after - mail_before))"
if [[ -d $maildir/new ]]; then
  echo "This run's e-mails (the bulk orders' confirmations cut to 3):"
  # (awk and sed read their whole input, so no writer dies of SIGPIPE.)
  find "$maildir/new" -type f -printf '%T@ %p\n' | sort -n |
    awk -v skip="$mail_before" 'NR > skip { sub(/^[^ ]* /, ""); print }' |
    while read -r message; do
      tr -d '\r' <"$message" | sed -n '1,/^$/p' |
        awk '{ name = tolower($0); sub(/:.*/, "", name); value = $0; sub(/^[^:]*: */, "", value) }
          name == "to" { to = value } name == "subject" { subject = value }
          END { print "  " subject "  ->  " to }'
    done | awk '!/ confirmed  -> / || ++confirmed <= 3' || true
fi

log "done: try 'target/release/ordctl status --json' or 'target/release/ordctl tail-queue';" \
  "'scripts/smtp-sink.sh stop' stops the SMTP sink"
