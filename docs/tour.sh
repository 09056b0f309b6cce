#!/usr/bin/env bash
# The README's tour, as a script: every command of the tour, in order, with nothing left out.
# CI runs it from a fresh clone (`bash docs/tour.sh`); a test checks that the README shows
# exactly the lines between the two markers below, so the two cannot drift apart.
#
#   bash docs/tour.sh                 # uses target/debug/cleanroom (built if missing)
#   CLEANROOM_BIN=path/to/cleanroom bash docs/tour.sh
#
# It works in a fresh temporary directory, on a free loopback port, and stops the server
# it started when it ends (even on failure).
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
BIN=${CLEANROOM_BIN:-$repo/target/debug/cleanroom}
if [ ! -x "$BIN" ]; then
  (cd "$repo" && cargo build -q -p cleanroom-cli)
fi
# `serve` runs only as a background job: exec makes that job the server itself, so the exit trap's
# kill reaches the server (killing a subshell around it left it running after the tour).
cleanroom() { if [ "${1:-}" = serve ]; then exec "$BIN" "$@"; else "$BIN" "$@"; fi; }
work=$(mktemp -d)
cd "$work"
port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
export CLEANROOM_LISTEN=127.0.0.1:$port CLEANROOM_SERVER=http://127.0.0.1:$port
export CLEANROOM_CONFIG_DIR=$work/config CLEANROOM_LOG=warn
# The server is stopped and waited for before its directory goes: removing the directory under a
# server still shutting down makes its last heartbeat fail with a warning.
trap 'kill $(jobs -p) 2>/dev/null || true; wait; rm -rf "$work"' EXIT
echo "tour: in $work, server on $CLEANROOM_SERVER" >&2

# --- tour begins ---
# 1. The operator creates a data directory (master key, metadata) and starts the server.
OPERATOR=$(cleanroom init --data-dir ./cleanroom-data --quiet)   # the operator's token
cleanroom serve --data-dir ./cleanroom-data &                      # CLEANROOM_LISTEN, default 127.0.0.1:8080
cleanroom health --wait 30
MAYA=$(CLEANROOM_TOKEN=$OPERATOR cleanroom org create northwind-retail --admin maya --quiet)
OMAR=$(CLEANROOM_TOKEN=$OPERATOR cleanroom org create daily-planet --admin omar --quiet)

# 2. The brand (maya) creates a collaboration and invites the publisher; the publisher (omar)
#    accepts. Collaborations are named by their name or their id.
export CLEANROOM_TOKEN=$MAYA
cleanroom collab create spring-campaign --description "overlap, match rates and activation"
cleanroom collab invite spring-campaign daily-planet --abilities contribute,analyse,receive
CLEANROOM_TOKEN=$OMAR cleanroom collab accept spring-campaign

# 3. On their own machines, both prepare raw first-party data: identifiers normalised and
#    HMAC-pseudonymised with a secret they share out of band (never the server), ages
#    banded, everything else dropped, re-identification risk checked (exit 3 if refused).
head -c 32 /dev/urandom | base64 > shared-secret
cleanroom synth --party brand --raw --out customers.csv --schema-out brand-prep.toml
cleanroom prepare --config brand-prep.toml --input customers.csv --output crm.parquet \
    --secret-file shared-secret            # -> crm.parquet, crm.schema.toml, crm.report.md
cleanroom synth --party publisher --raw --out audience.csv --schema-out publisher-prep.toml
cleanroom prepare --config publisher-prep.toml --input audience.csv --output readers.parquet \
    --secret-file shared-secret

# 4. Each uploads its prepared file (encrypted at rest; members see schema, owner and row
#    count, never rows).
cleanroom dataset upload spring-campaign crm --file crm.parquet --schema crm.schema.toml --quiet
CLEANROOM_TOKEN=$OMAR cleanroom dataset upload spring-campaign readers --file readers.parquet \
    --schema readers.schema.toml --quiet
cleanroom dataset list spring-campaign

# 5. Each owner sets the rules for its data: a policy written from the dataset's schema and
#    the collaboration's members (read it before you set it), a privacy budget, and its
#    approval of the ready-made analyses it accepts. The brand's policy lets the publisher
#    activate matched segments.
cleanroom policy example spring-campaign crm --activation > crm-policy.toml
cleanroom policy set spring-campaign crm --file crm-policy.toml
CLEANROOM_TOKEN=$OMAR cleanroom policy example spring-campaign readers > readers-policy.toml
CLEANROOM_TOKEN=$OMAR cleanroom policy set spring-campaign readers --file readers-policy.toml
cleanroom budget grant spring-campaign --epsilon 5 --per-query-epsilon 1   # delta 1e-6, 2e-7 per query
CLEANROOM_TOKEN=$OMAR cleanroom budget grant spring-campaign --epsilon 5 --per-query-epsilon 1
for template in overlap overlap_ids; do
  cleanroom template approve spring-campaign $template --dataset crm
  CLEANROOM_TOKEN=$OMAR cleanroom template approve spring-campaign $template --dataset readers
done

# 6. Ask: ready-made analyses or aggregate SQL; only protected aggregates come back.
cleanroom template run spring-campaign overlap -p left=crm -p right=readers -p key=email_hmac \
    -p by=region
cleanroom template run spring-campaign overlap_ids -p left=crm -p right=readers \
    -p keys=email_hmac,phone_hmac,maid_hmac          # match rates per identifier type, a cascade
cleanroom query spring-campaign "SELECT c.region, COUNT(DISTINCT c.customer_id) AS people
    FROM crm c JOIN readers r ON c.email_hmac = r.email_hmac GROUP BY c.region" --dry-run
if cleanroom query spring-campaign "SELECT email_hmac FROM crm"; then exit 1; fi   # refused: rule and column
cleanroom analysis list spring-campaign
cleanroom budget show spring-campaign               # epsilon and delta: granted, spent, left

# 7. Activation: the publisher asks for the brand's customers it also has (matched on email)
#    as its OWN device ids; the brand approves; the publisher downloads them once. Only
#    matched people whose publisher row has a device id count towards the brand's minimum.
ACTIVATION=$(CLEANROOM_TOKEN=$OMAR cleanroom activation request spring-campaign --source crm \
    --target readers --key email_hmac --output maid_hmac --quiet)
cleanroom activation approve spring-campaign "$ACTIVATION"
CLEANROOM_TOKEN=$OMAR cleanroom activation download spring-campaign "$ACTIVATION" -o segment.csv
wc -l segment.csv

# 8. The audit trail: every action and refusal, hash-chained, verified on this machine (which
#    remembers the head it verified). Then close: the keys, and with them the data, are gone.
cleanroom audit verify spring-campaign
cleanroom collab close spring-campaign --yes
# --- tour ends ---
echo "tour: every step passed" >&2
