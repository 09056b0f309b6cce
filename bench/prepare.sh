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
# assessed; the free text and the customer id are dropped. Each configuration runs with one
# worker pinned to one core (`taskset -c 0`: reader, worker and writer share it, so rows/s
# per core = rows / wall seconds there) and with 2 workers on all cores. The pipeline is the
# library's (`prepare_bench prepare`, what `cleanroom prepare --threads N` calls), so the
# bench does not need a release build of the whole CLI. Peak memory is the maximum RSS.
set -euo pipefail
cd "$(dirname "$0")/.."
ROWS=${1:-10000000}
RUNS=${2:-1}
OUT=${BENCH_OUT:-bench/out}
mkdir -p "$OUT"
cargo build --release -q -p cleanroom-identity --example prepare_bench
GEN=${CARGO_TARGET_DIR:-target}/release/examples/prepare_bench

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
measure() { # CONFIG LABEL THREADS PIN -> sets W (wall s), C (CPU s), M (peak KiB)
  local cfg=$1 label=$2 threads=$3 pin=$4 walls=() cpus=() rss=() run wall user sys maxrss
  for run in $(seq 1 "$RUNS"); do
    rm -f "$OUT"/prepared.*
    /usr/bin/time -f "%e %U %S %M" -o "$OUT/time" \
      $pin "$GEN" prepare "$cfg" "$CSV" "$OUT/prepared.parquet" "$threads" > "$OUT/summary-$label.txt"
    read -r wall user sys maxrss < "$OUT/time"
    walls+=("$wall"); cpus+=("$(echo "$user + $sys" | bc -l)"); rss+=("$maxrss")
    printf '%s run %d: %.2f s wall, %.2f s CPU, peak %d MiB\n' "$label" "$run" "$wall" "${cpus[-1]}" "$((maxrss / 1024))"
  done
  W=$(printf '%s\n' "${walls[@]}" | median)
  C=$(printf '%s\n' "${cpus[@]}" | median)
  M=$(printf '%s\n' "${rss[@]}" | median)
}
report() { # LABEL
  printf '%-28s %7.2f s wall %7.2f s CPU  %9.0f rows/s  %9.0f rows/s per CPU-second  peak %4.0f MiB\n' \
    "$1" "$W" "$C" "$(echo "$ROWS / $W" | bc -l)" "$(echo "$ROWS / $C" | bc -l)" "$(echo "$M / 1024" | bc -l)"
}

"$GEN" profile "$CSV" 200000 | tee "$OUT/profile.txt"
HMAC=$("$GEN" hmac 4)
echo "$HMAC"
RAW=$(echo "$HMAC" | awk '/32-byte/ {print $4}')
declare -A RATE
for cfgl in "$OUT/prep-nophone.toml:email-only" "$CONFIG:email+phone"; do
  cfg=${cfgl%%:*}; label=${cfgl##*:}
  measure "$cfg" "$label-1core" 1 "taskset -c 0"
  RATE[$label-1]=$(echo "$ROWS / $W" | bc -l); report "$label, 1 worker on 1 core" >> "$OUT/results.txt"
  measure "$cfg" "$label-2threads" 2 ""
  RATE[$label-2]=$(echo "$ROWS / $W" | bc -l); report "$label, 2 workers" >> "$OUT/results.txt"
done
OUT_BYTES=$(stat -c %s "$OUT/prepared.parquet")
echo "---"
echo "machine: $(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo), $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), load $(cut -d' ' -f1-3 /proc/loadavg)"
echo "date: $(date -u +%Y-%m-%d)"
printf 'input: %d rows, %.1f MB CSV; output %.1f MB Parquet\n' "$ROWS" "$(echo "$BYTES / 1000000" | bc -l)" \
  "$(echo "$OUT_BYTES / 1000000" | bc -l)"
cat "$OUT/results.txt"; rm -f "$OUT/results.txt"
printf 'raw HMAC-SHA-256 (32-byte messages, keyed state cloned): %.0f per second per core\n' "$RAW"
for l in email-only email+phone; do
  printf '%s: %.0f rows/s on one core (ratio raw HMAC / rows per core %.1f), %.0f rows/s with 2 workers (scaling %.2fx)\n' \
    "$l" "${RATE[$l-1]}" "$(echo "$RAW / ${RATE[$l-1]}" | bc -l)" "${RATE[$l-2]}" "$(echo "${RATE[$l-2]} / ${RATE[$l-1]}" | bc -l)"
done
