#!/usr/bin/env bash
# Small analyses through the HTTP API with the metadata on SQLite (the embedded default)
# against PostgreSQL (issue 14): the same room set up on each, then N different one-table
# COUNT queries (each authenticated, checked, charged, run, released and audited), one at a
# time, timed by curl (time_total, so no process start-up is counted). Prints p50, p90, p99
# and the mean per backend, and the ratios PostgreSQL / SQLite.
#
#   bash bench/metadata.sh [N] [ROUNDS]      (defaults: 1000 analyses, 2 rounds, alternating)
#
# PostgreSQL is the one `.ci/services` starts on this machine (loopback, default settings).
set -euo pipefail
cd "$(dirname "$0")/.."
N=${1:-1000}
ROUNDS=${2:-2}
OUT=${BENCH_OUT:-bench/out}/metadata
rm -rf "$OUT"; mkdir -p "$OUT"
cargo build --release -q -p cleanroom-cli
BIN=$PWD/${CARGO_TARGET_DIR:-target}/release/cleanroom
eval "$(bash .ci/services 2>/dev/null)"
: "${CLEANROOM_TEST_POSTGRES:?.ci/services did not give a PostgreSQL URL}"
command -v curl >/dev/null || { echo "needs curl" >&2; exit 1; }

csv() { # FILE PREFIX
  awk -v p="$2" 'BEGIN { print "pid,email_hmac,city,n"; for (i = 0; i < 2000; i++) printf "%s%d,e%d,city%d,%d\n", p, i, i, i % 3, i % 5 }' > "$1"
}
csv "$OUT/crm.csv" c
cat > "$OUT/policy.toml" <<'TOML'
join_keys = ["email_hmac"]
dimensions = ["city"]
analysts = ["brand"]
receivers = ["brand"]
[[metrics]]
column = "n"
lower = 0
upper = 10
TOML

PIDS=()
trap 'for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done' EXIT
run() { # LABEL ROUND PORT [METADATA_URL]
  local label=$1 round=$2 port=$3 meta=${4:-} data="$OUT/$1-$2" url="http://127.0.0.1:$3"
  local -a env=(env -u CLEANROOM_METADATA -u CLEANROOM_MASTER_KEY)
  if [ -n "$meta" ]; then
    local schema="bench_${label}_${round}_$$"
    psql "${meta}" -q -c "DROP SCHEMA IF EXISTS $schema CASCADE; CREATE SCHEMA $schema" >/dev/null
    env+=("CLEANROOM_METADATA=${meta}?options[search_path]=$schema")
  fi
  local op brand
  op=$("${env[@]}" "$BIN" init --data-dir "$data" --quiet)
  "${env[@]}" "$BIN" serve --data-dir "$data" --listen "127.0.0.1:$port" >"$data.log" 2>&1 &
  PIDS+=($!)
  local pid=$!
  "$BIN" --server "$url" health --wait 30 >/dev/null
  brand=$(CLEANROOM_TOKEN=$op "$BIN" --server "$url" org create brand --admin a --quiet)
  export CLEANROOM_SERVER=$url CLEANROOM_TOKEN=$brand
  "$BIN" collab create bench >/dev/null
  "$BIN" dataset upload bench crm --file "$OUT/crm.csv" --quiet -c pid:string:privacy_unit \
    -c email_hmac:string:identifier -c city:string:dimension -c n:int64:metric >/dev/null
  "$BIN" policy set bench crm --file "$OUT/policy.toml" >/dev/null
  "$BIN" budget grant bench --epsilon 100 --per-query-epsilon 1 >/dev/null
  local times="$OUT/$label-$round.times"
  : > "$times"
  for i in $(seq 1 "$N"); do
    curl -s -o /dev/null -w '%{http_code} %{time_total}\n' -H "authorization: Bearer $brand" \
      -H 'content-type: application/json' \
      -d "{\"sql\": \"SELECT COUNT(*) AS n_$i FROM crm\", \"epsilon\": 0.05}" \
      "$url/v1/collaborations/bench/queries" >> "$times"
  done
  unset CLEANROOM_SERVER CLEANROOM_TOKEN
  kill "$pid"; wait "$pid" 2>/dev/null || true
  local bad
  bad=$(awk '$1 != 200' "$times" | wc -l)
  [ "$bad" -eq 0 ] || { echo "$label round $round: $bad analyses did not answer 200" >&2; awk '$1 != 200' "$times" | head >&2; exit 1; }
  awk '{print $2 * 1000}' "$times" | sort -g > "$times.ms"
}
pct() { awk -v q="$2" '{a[NR]=$1} END {i = int(q * NR + 0.999999); if (i < 1) i = 1; printf "%.2f", a[i]}' "$1"; }
mean() { awk '{s+=$1} END {printf "%.2f", s/NR}' "$1"; }

echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), load $(cut -d' ' -f1-3 /proc/loadavg); $(date -u +%Y-%m-%dT%H:%MZ)"
for r in $(seq 1 "$ROUNDS"); do
  run sqlite "$r" 18610
  run postgres "$r" 18611 "$CLEANROOM_TEST_POSTGRES"
done
for label in sqlite postgres; do
  cat "$OUT/$label"-*.times.ms | sort -g > "$OUT/$label.all"
  printf '%-9s %d analyses: p50 %s ms  p90 %s ms  p99 %s ms  mean %s ms\n' "$label" \
    "$(wc -l < "$OUT/$label.all")" "$(pct "$OUT/$label.all" 0.5)" "$(pct "$OUT/$label.all" 0.9)" \
    "$(pct "$OUT/$label.all" 0.99)" "$(mean "$OUT/$label.all")"
done
for q in 50 99; do
  printf 'PostgreSQL / SQLite at p%s: %.2f\n' "$q" \
    "$(echo "$(pct "$OUT/postgres.all" "0.$q") / $(pct "$OUT/sqlite.all" "0.$q")" | bc -l)"
done
