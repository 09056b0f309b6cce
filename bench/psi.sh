#!/usr/bin/env bash
# PSI-cardinality, PSI (intersection, on ECDH and on OT) and the two PSI-sums on N × N items
# with a known overlap: `cleanroom psi` (two processes over TLS on 127.0.0.1) next to
# openmined-psi 2.0.6 (both roles in one Python process, single-threaded C++; it has no sum),
# on the same sets, in one run.
#
#   bash bench/psi.sh [N] [THREADS...]      (defaults: 1000000, then 1 and 2 threads)
#
# PROTOCOLS="cardinality intersection intersection-ot" (the default) picks what runs;
# intersection-ot is `--protocol intersection --engine ot`, compared with openmined-psi's
# intersection. `sum` (the sender holds a value per identifier, the receiver learns the sum
# over matches) and `sum-to-holder` (`--sum-to values-holder`: the receiver holds the values)
# can be added; a user's value is its number mod 97, checked against the plaintext sum.
# KINDS=2 gives the sums a second identifier per user (an opaque device id, after the email).
# CLEANROOM_BIN=path runs that binary instead of building one (to set a baseline beside it).
# Overlap: half of each set. Wall time covers reading the input and the whole protocol. Bytes
# on the wire: cleanroom counts what crosses the TCP socket (TLS records included) in both
# directions; openmined-psi's are the sizes of its three protobuf messages. Peak RSS and CPU
# time (user + system, both cleanroom processes added) from /usr/bin/time and getrusage.
# OPENMINED=0 skips the openmined-psi runs.
set -euo pipefail
cd "$(dirname "$0")/.."
N=${1:-1000000}
shift || true
THREADS=("$@")
[ ${#THREADS[@]} -gt 0 ] || THREADS=(1 2)
OUT=${BENCH_OUT:-bench/out}/psi
mkdir -p "$OUT"

echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(free -g | awk '/Mem:/ {print $2}') GiB, $(date -u '+%F %H:%M') UTC, load average $(cut -d' ' -f1-3 /proc/loadavg)"
if [ -n "${CLEANROOM_BIN:-}" ]; then
  BIN=$CLEANROOM_BIN
else
  cargo build --release -q -p cleanroom-cli
  BIN=target/release/cleanroom
fi

# Receiver A: user0 .. user(N-1); sender B: user(N/2) .. user(N/2+N-1). Overlap N/2.
A="$OUT/a-$N.txt"; B="$OUT/b-$N.txt"
if [ ! -f "$A" ]; then
  awk -v n="$N" 'BEGIN { for (i = 0; i < n; i++) printf "user%d@example.com\n", i }' > "$A"
  awk -v n="$N" 'BEGIN { for (i = n/2; i < n/2 + n; i++) printf "user%d@example.com\n", i }' > "$B"
  { echo id; cat "$A"; } > "$OUT/a-$N.csv"
  { echo id; cat "$B"; } > "$OUT/b-$N.csv"
fi
if [ ! -f "$OUT/b-$N-sums.csv" ]; then
  awk -v n="$N" 'BEGIN { print "id,dev,value"; for (i = 0; i < n; i++) printf "user%d@example.com,dev%d,%d\n", i, i, i % 97 }' > "$OUT/a-$N-sums.csv"
  awk -v n="$N" 'BEGIN { print "id,dev,value"; for (i = n/2; i < n/2 + n; i++) printf "user%d@example.com,dev%d,%d\n", i, i, i % 97 }' > "$OUT/b-$N-sums.csv"
fi
EXPECT=$((N / 2))
# The overlap is user(N/2) .. user(N-1) on both sides.
EXPECT_SUM=$(python3 -c "import sys; n=int(sys.argv[1]); print(sum(i % 97 for i in range(n // 2, n)))" "$N")

[ -f "$OUT/keys-a/psi-cert.pem" ] || "$BIN" psi keygen --out "$OUT/keys-a" > /dev/null
[ -f "$OUT/keys-b/psi-cert.pem" ] || "$BIN" psi keygen --out "$OUT/keys-b" > /dev/null
# The pin: SHA-256 of the certificate's DER (what keygen prints).
fp() { python3 -c "import hashlib,base64,sys; t=open(sys.argv[1]).read(); b=''.join(l for l in t.splitlines() if '-----' not in l); print(hashlib.sha256(base64.b64decode(b)).hexdigest())" "$1"; }
FA=$(fp "$OUT/keys-a/psi-cert.pem")
FB=$(fp "$OUT/keys-b/psi-cert.pem")

now() { date +%s.%N; }
json_field() { python3 -c "import json,sys; print(json.load(open(sys.argv[1]))[sys.argv[2]])" "$1" "$2"; }

RESULTS="$OUT/results-$N.tsv"
printf "impl\tprotocol\tthreads\twall_s\tcpu_s\tbytes_total\tpeak_rss_mib\tresult\n" > "$RESULTS"

run_cleanroom() {
  local protocol=$1 threads=$2
  local tag="$protocol-t$threads-$N"
  local extra=() proto=(--protocol "$protocol") serve_extra=()
  local in_a="$OUT/a-$N.csv" in_b="$OUT/b-$N.csv"
  local values=(--value-column value --max-value 1000) ids=(--id email:id)
  case "$protocol" in
    intersection) extra=(--output "$OUT/matches-$N.csv") ;;
    intersection-ot) extra=(--output "$OUT/matches-$N.csv"); proto=(--protocol intersection --engine ot) ;;
    sum) in_a="$OUT/a-$N-sums.csv"; in_b="$OUT/b-$N-sums.csv"; serve_extra=("${values[@]}") ;;
    sum-to-holder)
      proto=(--protocol sum --sum-to values-holder)
      in_a="$OUT/a-$N-sums.csv"; in_b="$OUT/b-$N-sums.csv"; extra=("${values[@]}") ;;
  esac
  case "$protocol" in
    sum*) [ "${KINDS:-1}" = 1 ] || ids+=(--id opaque:dev); tag="$tag-k${KINDS:-1}" ;;
  esac
  # Both parties start together, as two machines would: each reads and blinds its input, then
  # the connecting side retries until the listening side is ready.
  local port; port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
  local t0; t0=$(now)
  /usr/bin/time -f "%M %U %S" -o "$OUT/rss-serve-$tag" "$BIN" --json psi serve --listen "127.0.0.1:$port" \
    "${proto[@]}" --input "$in_b" "${ids[@]}" --threads "$threads" --quiet \
    --cert "$OUT/keys-b/psi-cert.pem" --key "$OUT/keys-b/psi-key.pem" --peer-cert-sha256 "$FA" \
    ${serve_extra[@]+"${serve_extra[@]}"} > "$OUT/serve-$tag.json" 2> "$OUT/serve-$tag.log" &
  local spid=$!
  /usr/bin/time -f "%M %U %S" -o "$OUT/rss-connect-$tag" "$BIN" --json psi connect --peer "127.0.0.1:$port" \
    "${proto[@]}" --receiver --input "$in_a" "${ids[@]}" --threads "$threads" --quiet \
    --cert "$OUT/keys-a/psi-cert.pem" --key "$OUT/keys-a/psi-key.pem" --peer-cert-sha256 "$FB" \
    ${extra[@]+"${extra[@]}"} > "$OUT/connect-$tag.json" 2> "$OUT/connect-$tag.log"
  wait "$spid"
  local t1; t1=$(now)
  local wall; wall=$(echo "$t1 - $t0" | bc -l)
  local sent recv matched rss_s rss_c
  sent=$(json_field "$OUT/connect-$tag.json" bytes_sent)
  recv=$(json_field "$OUT/connect-$tag.json" bytes_received)
  matched=$(json_field "$OUT/connect-$tag.json" matched_total)
  read -r rss_s us_s ss_s < <(tail -1 "$OUT/rss-serve-$tag")
  read -r rss_c us_c ss_c < <(tail -1 "$OUT/rss-connect-$tag")
  local cpu; cpu=$(echo "$us_s + $ss_s + $us_c + $ss_c" | bc -l)
  [ "$matched" = "$EXPECT" ] || { echo "cleanroom $protocol: got $matched, want $EXPECT" >&2; exit 1; }
  case "$protocol" in
    sum*) local sum; sum=$(json_field "$OUT/connect-$tag.json" sum)
      [ "$sum" = "$EXPECT_SUM" ] || { echo "cleanroom $protocol: sum $sum, want $EXPECT_SUM" >&2; exit 1; } ;;
  esac
  printf "cleanroom\t%s\t%s\t%.2f\t%.2f\t%d\t%d + %d\t%s\n" "$protocol" "$threads" "$wall" "$cpu" $((sent + recv)) \
    $((rss_c / 1024)) $((rss_s / 1024)) "$matched" >> "$RESULTS"
  echo "cleanroom $protocol threads=$threads: ${wall}s, receiver sent $sent B, received $recv B, rss receiver $((rss_c / 1024)) MiB sender $((rss_s / 1024)) MiB, read $(json_field "$OUT/connect-$tag.json" read_seconds)s protocol $(json_field "$OUT/connect-$tag.json" protocol_seconds)s"
}

VENV="${BENCH_OUT:-bench/out}/venv-openmined"
if [ ! -x "$VENV/bin/python" ]; then
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q openmined-psi==2.0.6
fi

run_openmined() {
  local protocol=$1
  local j; j=$("$VENV/bin/python" bench/psi_openmined.py "$A" "$B" "$protocol")
  echo "openmined-psi $protocol: $j"
  python3 - "$j" "$EXPECT" >> "$RESULTS" <<'PY'
import json, sys
j = json.loads(sys.argv[1])
if j["result"] != int(sys.argv[2]):
    sys.exit(f"openmined-psi: got {j['result']}, want {sys.argv[2]}")
print(f"openmined-psi\t{j['protocol']}\t1\t{j['wall_seconds']:.2f}\t{j['cpu_seconds']:.2f}\t{j['bytes_total']}\t{j['peak_rss_kib'] // 1024}\t{j['result']}")
PY
}

for protocol in ${PROTOCOLS:-cardinality intersection intersection-ot}; do
  # openmined-psi has one intersection; it runs once, before the first cleanroom engine.
  if [ "${OPENMINED:-1}" != 0 ] && { [ "$protocol" = cardinality ] || [ "$protocol" = intersection ]; }; then
    run_openmined "$protocol"
  fi
  for t in "${THREADS[@]}"; do
    run_cleanroom "$protocol" "$t"
  done
done

echo
echo "N = $N per side, overlap $EXPECT"
column -t -s $'\t' "$RESULTS"
python3 - "$RESULTS" <<'PY'
import csv, sys
rows = list(csv.DictReader(open(sys.argv[1]), delimiter="\t"))
om = {r["protocol"]: r for r in rows if r["impl"] == "openmined-psi"}
if not om:
    sys.exit(0)
print()
print("ratios cleanroom / openmined-psi (below 1: cleanroom is faster or smaller)")
for r in rows:
    if r["impl"] != "cleanroom":
        continue
    o = om.get(r["protocol"].removesuffix("-ot"))
    if o is None:
        continue
    print(f"  {r['protocol']:12} threads={r['threads']}: wall {float(r['wall_s']) / float(o['wall_s']):.2f}, "
          f"cpu {float(r['cpu_s']) / float(o['cpu_s']):.2f}, bytes {int(r['bytes_total']) / int(o['bytes_total']):.2f}")
PY
