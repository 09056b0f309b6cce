#!/usr/bin/env bash
# Upload-and-encrypt throughput of a generated CSV through the real server and CLI, next to a
# baseline that only copies the same file to the same disk and fsyncs it.
#
#   bash bench/upload.sh [ROWS] [RUNS]        (defaults: 1000000 rows, 3 runs)
#
# Prints one line per run and the medians; peak memory is the server's VmHWM and the client's
# maximum resident set size.
set -euo pipefail
cd "$(dirname "$0")/.."
ROWS=${1:-1000000}
RUNS=${2:-3}
OUT=${BENCH_OUT:-bench/out}
mkdir -p "$OUT"
cargo build --release -q -p cleanroom-cli
BIN=target/release/cleanroom

CSV="$OUT/brand-$ROWS.csv"
SCHEMA="$OUT/brand.toml"
[ -f "$CSV" ] || "$BIN" synth --party brand --people "$ROWS" --out "$CSV" --schema-out "$SCHEMA"
[ -f "$SCHEMA" ] || "$BIN" synth --party brand --people 10 --out /dev/null --schema-out "$SCHEMA"
BYTES=$(stat -c %s "$CSV")

now() { date +%s.%N; }
median() { sort -g | awk '{a[NR]=$1} END {print (NR%2) ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2}'; }

upload_times=(); copy_times=(); server_rss=(); client_rss=()
for run in $(seq 1 "$RUNS"); do
  DATA="$OUT/data-$run"; rm -rf "$DATA"
  TOKEN=$("$BIN" init --json --data-dir "$DATA" | sed -n 's/.*"token": "\(crt_[^"]*\)".*/\1/p')
  "$BIN" serve --data-dir "$DATA" --listen 127.0.0.1:0 2> "$OUT/serve-$run.log" &
  SPID=$!
  for _ in $(seq 1 100); do grep -q "listening on" "$OUT/serve-$run.log" && break; sleep 0.1; done
  URL=$(sed -n 's/^cleanroom listening on \(http:[^ ]*\).*/\1/p' "$OUT/serve-$run.log")
  export CLEANROOM_SERVER=$URL
  BRAND=$(CLEANROOM_TOKEN=$TOKEN "$BIN" --json org create brand | sed -n 's/.*"token": "\(crt_[^"]*\)".*/\1/p')
  CID=$(CLEANROOM_TOKEN=$BRAND "$BIN" --json collab create bench | sed -n 's/.*"id": "\([0-9a-f-]*\)".*/\1/p' | head -1)

  t0=$(now)
  CLEANROOM_TOKEN=$BRAND /usr/bin/time -f "%M" -o "$OUT/client-rss-$run" \
    "$BIN" dataset upload "$CID" crm --file "$CSV" --schema "$SCHEMA" --quiet > /dev/null
  t1=$(now)
  upload_times+=("$(echo "$t1 - $t0" | bc -l)")
  server_rss+=("$(awk '/VmHWM/ {print $2}' /proc/$SPID/status)")
  client_rss+=("$(cat "$OUT/client-rss-$run")")
  kill "$SPID"; wait "$SPID" 2>/dev/null || true

  t0=$(now); cp "$CSV" "$DATA/copy.csv"; sync "$DATA/copy.csv"; t1=$(now)
  copy_times+=("$(echo "$t1 - $t0" | bc -l)")
  rm -rf "$DATA"
  printf 'run %d: upload+encrypt %.2f s, copy+fsync %.2f s, server peak %d MiB, client peak %d MiB\n' \
    "$run" "${upload_times[-1]}" "${copy_times[-1]}" "$((${server_rss[-1]} / 1024))" "$((${client_rss[-1]} / 1024))"
done

U=$(printf '%s\n' "${upload_times[@]}" | median)
C=$(printf '%s\n' "${copy_times[@]}" | median)
S=$(printf '%s\n' "${server_rss[@]}" | median)
K=$(printf '%s\n' "${client_rss[@]}" | median)
echo "---"
echo "machine: $(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo), $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)"
echo "date: $(date -u +%Y-%m-%d)"
printf 'input: %d rows, %.1f MB CSV\n' "$ROWS" "$(echo "$BYTES / 1000000" | bc -l)"
printf 'upload+encrypt median: %.2f s = %.0f rows/s, %.1f MB/s\n' "$U" "$(echo "$ROWS / $U" | bc -l)" "$(echo "$BYTES / 1000000 / $U" | bc -l)"
printf 'baseline copy+fsync median: %.2f s (%.0f MB/s); ratio upload/copy: %.1fx\n' "$C" "$(echo "$BYTES / 1000000 / $C" | bc -l)" "$(echo "$U / $C" | bc -l)"
printf 'peak memory median: server %.0f MiB, client %.0f MiB\n' "$(echo "$S / 1024" | bc -l)" "$(echo "$K / 1024" | bc -l)"
