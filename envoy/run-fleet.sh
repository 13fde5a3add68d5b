#!/usr/bin/env bash
# The fleet demo (make run-fleet): Redis on :6390 (persistence off), the Rate Limit Service on
# :8081, two Envoys with api-guard on :10011 and :10012. Ctrl-C stops them all.
set -euo pipefail
envoy=$1
rls=$2
tmp=$(mktemp -d)
pids=()
stop() { for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done; rm -rf "$tmp"; }
trap stop EXIT INT TERM
redis-server --port 6390 --bind 127.0.0.1 --save "" --appendonly no --daemonize no >"$tmp/redis.log" 2>&1 &
pids+=($!)
for _ in $(seq 50); do (echo > /dev/tcp/127.0.0.1/6390) 2>/dev/null && break; sleep 0.1; done
FLEET_ENGINE=${FLEET_ENGINE:-limitador} "$rls" 127.0.0.1:8081 redis://127.0.0.1:6390/ tools/limitador-rls/fleet-limits.yaml &
pids+=($!)
sed -e 's/port_value: 10011/port_value: 10012/' -e 's/port_value: 9911/port_value: 9912/' \
    -e 's/port_value: 10021/port_value: 10022/' envoy/fleet.yaml > "$tmp/fleet-2.yaml"
"$envoy" -c envoy/fleet.yaml --concurrency 2 --base-id 11 --disable-hot-restart --log-level warn &
pids+=($!)
"$envoy" -c "$tmp/fleet-2.yaml" --concurrency 2 --base-id 12 --disable-hot-restart --log-level warn &
pids+=($!)
sleep 2
cat <<MSG

api-guard fleet demo: two Envoys (:10011 and :10012) share one limit of 10 requests per minute
per client address, counted by the Rate Limit Service (:8081) in Redis (:6390). Ctrl-C stops it.

# five requests to each Envoy: all admitted, X-RateLimit-Remaining counts down across both
for i in 1 2 3 4 5; do curl -s -o /dev/null -D - http://127.0.0.1:10011/api/x | grep -i ratelimit-remaining; curl -s -o /dev/null -D - http://127.0.0.1:10012/api/x | grep -i ratelimit-remaining; done

# the eleventh, on either Envoy: 429 rate_limited with Retry-After
curl -i http://127.0.0.1:10012/api/x

MSG
wait
