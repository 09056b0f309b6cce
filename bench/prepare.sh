#!/usr/bin/env bash
# Throughput of `cleanroom prepare` on a generated CSV of messy customer records, next to the
# raw HMAC-SHA-256 rate of the same machine measured by the same build.
#
#   bash bench/prepare.sh [ROWS] [RUNS]        (defaults: 10000000 rows, 1 run)
#
# The data (9 columns: customer id, email, phone, age, UK postcode, signup date, segment,
# revenue, free text) comes from `prepare_bench gen`; two identifiers are normalised and
# pseudonymised (email with Gmail rules, phone to E.164), three quasi-identifiers generalised
# (age band, postcode district, signup week), one dimension and one metric kept, the risk
# assessed; the free text and the customer id are dropped. `prepare` runs on one thread, so
# rows/s per core = rows / CPU seconds. Peak memory is the maximum resident set size.
set -euo pipefail
cd "$(dirname "$0")/.."
ROWS=${1:-10000000}
RUNS=${2:-1}
OUT=${BENCH_OUT:-bench/out}
mkdir -p "$OUT"
cargo build --release -q -p cleanroom-cli
cargo build --release -q -p cleanroom-identity --example prepare_bench
BIN=target/release/cleanroom
GEN=target/release/examples/prepare_bench

CSV="$OUT/customers-$ROWS.csv"
[ -f "$CSV" ] || "$GEN" gen "$ROWS" "$CSV"
BYTES=$(stat -c %s "$CSV")
CONFIG="$OUT/prep.toml"
cat > "$CONFIG" <<'TOML'
collaboration = "bench"
default_region = "GB"
gmail_rules = true
privacy_unit = "email"

[[identifier]]
column = "email"
kind = "email"

[[identifier]]
column = "phone"
kind = "phone"

[[quasi_identifier]]
column = "age"
generalise = "age_band"

[[quasi_identifier]]
column = "postcode"
name = "district"
generalise = "postcode_outward"

[[quasi_identifier]]
column = "signup"
name = "signup_week"
generalise = "week"

[[dimension]]
column = "segment"

[[metric]]
column = "revenue"
type = "float64"

[risk]
k = 5
sensitive = "segment"
min_l = 2
action = "warn"
TOML
export CLEANROOM_PREP_SECRET=benchmark-secret-0123456789abcdef

# The same configuration without the phone identifier: phone parsing and validation
# (libphonenumber metadata via the `phonenumber` crate) is most of the cost.
awk 'BEGIN { RS = ""; ORS = "\n\n" } !/column = "phone"/' "$CONFIG" > "$OUT/prep-nophone.toml"

median() { sort -g | awk '{a[NR]=$1} END {print (NR%2) ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2}'; }
measure() { # CONFIG LABEL -> sets W (wall s), C (CPU s), M (peak KiB)
  local cfg=$1 label=$2 walls=() cpus=() rss=() run wall user sys maxrss
  for run in $(seq 1 "$RUNS"); do
    rm -f "$OUT"/prepared.*
    /usr/bin/time -f "%e %U %S %M" -o "$OUT/time" \
      "$BIN" prepare --quiet --config "$cfg" --input "$CSV" --output "$OUT/prepared.parquet" > "$OUT/summary-$label.txt"
    read -r wall user sys maxrss < "$OUT/time"
    walls+=("$wall"); cpus+=("$(echo "$user + $sys" | bc -l)"); rss+=("$maxrss")
    printf '%s run %d: %.2f s wall, %.2f s CPU, peak %d MiB\n' "$label" "$run" "$wall" "${cpus[-1]}" "$((maxrss / 1024))"
  done
  W=$(printf '%s\n' "${walls[@]}" | median)
  C=$(printf '%s\n' "${cpus[@]}" | median)
  M=$(printf '%s\n' "${rss[@]}" | median)
}
measure "$OUT/prep-nophone.toml" email-only
W1=$W; C1=$C; M1=$M
measure "$CONFIG" email+phone
OUT_BYTES=$(stat -c %s "$OUT/prepared.parquet")

HMAC=$("$GEN" hmac 4)
echo "$HMAC"
RAW=$(echo "$HMAC" | awk '/32-byte/ {print $4}')
PER_CORE=$(echo "$ROWS / $C" | bc -l)
PER_CORE1=$(echo "$ROWS / $C1" | bc -l)
echo "---"
echo "machine: $(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo), $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)"
echo "date: $(date -u +%Y-%m-%d)"
printf 'input: %d rows, %.1f MB CSV; output %.1f MB Parquet\n' "$ROWS" "$(echo "$BYTES / 1000000" | bc -l)" \
  "$(echo "$OUT_BYTES / 1000000" | bc -l)"
cat "$OUT/summary-email+phone.txt"
printf 'prepare, email+phone: %.2f s wall, %.2f s CPU = %.0f rows/s per core; peak RSS %.0f MiB\n' \
  "$W" "$C" "$PER_CORE" "$(echo "$M / 1024" | bc -l)"
printf 'prepare, email only:  %.2f s wall, %.2f s CPU = %.0f rows/s per core; peak RSS %.0f MiB\n' \
  "$W1" "$C1" "$PER_CORE1" "$(echo "$M1 / 1024" | bc -l)"
printf 'raw HMAC-SHA-256 (32-byte messages, keyed state cloned): %.0f per second per core\n' "$RAW"
printf 'ratio raw HMAC rate / prepare rows per core: %.1f (email+phone, 2 HMACs a row), %.1f (email only, 1 HMAC a row)\n' \
  "$(echo "$RAW / $PER_CORE" | bc -l)" "$(echo "$RAW / $PER_CORE1" | bc -l)"
