#!/usr/bin/env bash
# Overlap with forced bounding (the privacy layer's worst case: per-person and per-key
# bounding over every row) under a memory limit against unlimited memory, side by side and
# interleaved: time, peak RSS (VmHWM of each run's own process) and bytes spilled (encrypted).
#
#   bash bench/memory.sh [ROWS] [LIMIT]     (default: 30000000 rows per dataset, 4G; RUNS=1)
#
# Data is generated once under bench/out/overlap-ROWS (as bench/query.sh does); spill files go
# to SPILL_DIR (default bench/out/spill).
set -euo pipefail
cd "$(dirname "$0")/.."
ROWS=${1:-30000000}
LIMIT=${2:-4G}
RUNS=${RUNS:-1}
OUT=${BENCH_OUT:-bench/out}
export SPILL_DIR=${SPILL_DIR:-$OUT/spill}
mkdir -p "$OUT" "$SPILL_DIR"
case "$LIMIT" in
  *G) BYTES=$(( ${LIMIT%G} << 30 )) ;;
  *M) BYTES=$(( ${LIMIT%M} << 20 )) ;;
  *) BYTES=$LIMIT ;;
esac
cargo build --release -q -p cleanroom-query --example overlap_bench
BIN=target/release/examples/overlap_bench
DIR="$OUT/overlap-$ROWS"
if [ ! -f "$DIR/ids" ]; then
  rm -rf "$DIR"
  echo "generating $ROWS x $ROWS ..." >&2
  "$BIN" generate "$DIR" "$ROWS"
fi
RESULTS="$OUT/memory-results.jsonl"
: > "$RESULTS"
for run in $(seq 1 "$RUNS"); do
  for limit in "$BYTES" unlimited; do
    if [ "$limit" = unlimited ]; then
      line=$("$BIN" run "$DIR" bounded) || line='{"failed":true}'
    else
      line=$(MAX_MEMORY=$limit "$BIN" run "$DIR" bounded) || line='{"failed":true}'
    fi
    echo "$limit $line" | tee -a "$RESULTS" >&2
  done
done
python3 - "$RESULTS" "$LIMIT" "$ROWS" <<'PY'
import json, statistics, sys, collections
runs = collections.defaultdict(list)
for line in open(sys.argv[1]):
    limit, js = line.split(" ", 1)
    runs[limit].append(json.loads(js))
med = statistics.median
lim = [k for k in runs if k != "unlimited"][0]
a, b = runs[lim], runs["unlimited"]
def m(x, k): return med(r[k] for r in x if not r.get("failed"))
print(f"| rows per dataset | --max-memory {sys.argv[2]} | unlimited | time ratio | peak RSS limited / unlimited | spilled (encrypted) | spill files |")
print("|---|---:|---:|---:|---:|---:|---:|")
print(f"| {int(sys.argv[3]):,} | {m(a,'seconds'):.1f} s | {m(b,'seconds'):.1f} s | {m(a,'seconds')/m(b,'seconds'):.2f}x | {m(a,'peak_rss_mib'):,.0f} / {m(b,'peak_rss_mib'):,.0f} MiB | {m(a,'spilled_bytes')/2**30:.2f} GiB | {m(a,'spill_files'):.0f} |")
PY
echo "machine: $(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo), $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)"
echo "date: $(date -u +%Y-%m-%d)"
