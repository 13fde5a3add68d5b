#!/usr/bin/env bash
# Requests/s through one Envoy worker with and without api-guard, on the demo route with a valid
# ES256 token. Envoy is pinned to CPU 0 and wrk to CPU 1; configurations are interleaved in
# rounds (bare, api-guard, bare, ...) and medians reported, because this machine is shared.
#   ROUNDS=3 DURATION=10 CONNECTIONS=32 bash bench/run.sh
set -euo pipefail
cd "$(dirname "$0")/.."

ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-10}
WARMUP=${WARMUP:-2}
CONNECTIONS=${CONNECTIONS:-32}
ENVOY=${ENVOY:-$PWD/.venv/bin/envoy}
CLI=target/release/api-guard
out=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$out"' EXIT

if ! command -v wrk >/dev/null; then
    echo "wrk not found: installing the Debian package" >&2
    (apt-get update -qq && apt-get install -y -qq wrk) >/dev/null 2>&1 || { echo "install wrk (Debian package 'wrk')" >&2; exit 1; }
fi
cpus=$(nproc)
pin_envoy=(); pin_wrk=()
if command -v taskset >/dev/null && [ "$cpus" -ge 2 ]; then pin_envoy=(taskset -c 0); pin_wrk=(taskset -c 1); fi

# The bare configuration is the demo without the wasm filter: same listeners, same upstream.
cp envoy/demo.yaml "$out/api-guard.yaml"
awk '
  /- name: envoy.filters.http.wasm/ { skip = 1; indent = index($0, "-") }
  skip && /- name: envoy.filters.http.router/ && index($0, "-") == indent { skip = 0 }
  !skip { print }
' envoy/demo.yaml > "$out/bare.yaml"
grep -q envoy.filters.http.wasm "$out/bare.yaml" && { echo "failed to strip the filter" >&2; exit 1; }

token=$($CLI token --key envoy/demo-keys/demo-es256.private.json --iss https://auth.demo.api-guard.local \
    --aud https://api.demo.api-guard.local --sub alice --scope documents:read --ttl 3600)
url=http://127.0.0.1:10000/api/documents

run_one() { # config name, round
    local name=$1 round=$2
    "${pin_envoy[@]}" "$ENVOY" -c "$out/$name.yaml" --concurrency 1 --disable-hot-restart \
        --log-level error > "$out/envoy-$name-$round.log" 2>&1 &
    local pid=$!
    for _ in $(seq 100); do curl -sf -o /dev/null http://127.0.0.1:9901/ready && break; sleep 0.1; done
    status=$(curl -s -o /dev/null -w '%{http_code}' -H "Authorization: Bearer $token" $url)
    [ "$status" = 200 ] || { echo "$name: probe answered $status" >&2; kill $pid; exit 1; }
    "${pin_wrk[@]}" wrk -t1 -c"$CONNECTIONS" -d"${WARMUP}s" -H "Authorization: Bearer $token" $url > /dev/null
    "${pin_wrk[@]}" wrk -t1 -c"$CONNECTIONS" -d"${DURATION}s" --latency -H "Authorization: Bearer $token" $url \
        > "$out/wrk-$name-$round.txt"
    kill $pid; wait $pid 2>/dev/null || true
    local rps p50 p99 non2xx
    rps=$(awk '/Requests\/sec/ {print $2}' "$out/wrk-$name-$round.txt")
    p50=$(awk '$1 == "50%" {print $2}' "$out/wrk-$name-$round.txt")
    p99=$(awk '$1 == "99%" {print $2}' "$out/wrk-$name-$round.txt")
    non2xx=$(awk '/Non-2xx/ {print $NF}' "$out/wrk-$name-$round.txt"); non2xx=${non2xx:-0}
    echo "$name $rps $p50 $p99 $non2xx" >> "$out/results"
    printf '  round %d %-10s %10s req/s  p50 %-8s p99 %-8s non-2xx %s\n' "$round" "$name" "$rps" "$p50" "$p99" "$non2xx"
}

echo "wrk: $CONNECTIONS connections, ${DURATION}s per run after ${WARMUP}s warm-up, $ROUNDS rounds; Envoy --concurrency 1 ${pin_envoy[*]:+(pinned)}"
for round in $(seq "$ROUNDS"); do
    run_one bare "$round"
    run_one api-guard "$round"
done

median() { sort -n | awk '{a[NR]=$1} END {print (NR % 2) ? a[(NR+1)/2] : (a[NR/2] + a[NR/2+1]) / 2}'; }
echo
echo "| configuration | median req/s | p50 (median) | p99 (median) | non-2xx |"
echo "|---|---|---|---|---|"
for name in bare api-guard; do
    rps=$(awk -v n=$name '$1 == n {print $2}' "$out/results" | median)
    p50=$(awk -v n=$name '$1 == n {print $3}' "$out/results" | sort | sed -n "$(( (ROUNDS + 1) / 2 ))p")
    p99=$(awk -v n=$name '$1 == n {print $4}' "$out/results" | sort | sed -n "$(( (ROUNDS + 1) / 2 ))p")
    bad=$(awk -v n=$name '$1 == n {s += $5} END {print s + 0}' "$out/results")
    echo "| $name | $rps | $p50 | $p99 | $bad |"
    eval "rps_${name//-/_}=$rps"
done
echo
awk -v a="$rps_api_guard" -v b="$rps_bare" 'BEGIN { printf "api-guard / bare = %.2f\n", a / b }'
ls -la target/wasm32-wasip1/release/api_guard.wasm | awk '{printf "api_guard.wasm: %d bytes\n", $5}'
