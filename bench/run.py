#!/usr/bin/env python3
"""api-guard against Envoy's native filters, through a real Envoy.

Three configurations of one Envoy (--concurrency 1, pinned to CPU 0; wrk on CPU 1), each with a
second listener of the same Envoy as the upstream answering a small JSON body:
  bare       no security filter: the physical limit of this route
  empty-wasm a proxy-wasm filter that does nothing (bench/empty-filter): the floor of any wasm
             filter in Envoy's V8, measured for the hot workload
  hostcall-floor
             a proxy-wasm filter that makes only the host calls api-guard makes on a hot request
             (bench/hostcall-floor), and decides nothing: the floor of this job through the
             proxy-wasm ABI, measured for the hot workload
  native     envoy.filters.http.cors + jwt_authn (ES256, issuer, audience, claim_to_headers,
             jwt_cache_config) + local_ratelimit (x-ratelimit headers) + security headers via
             response_headers_to_add
  api-guard  the filter with the equivalent config (JWT ES256, CORS, security headers, a rate
             limit, error rewriting)
  api-guard-module
             the same config through the Envoy dynamic module (target/release/libapi_guard.so,
             `make module`): the same core, native code in Envoy's process
Workloads: hot (one valid token), cold (20,000 distinct valid tokens, round robin), reject
(distinct tokens with a bad signature), limited (a rate limit that refuses most requests).
Configurations are interleaved in rounds and medians reported: this machine is shared and noisy.

  python3 bench/run.py [--rounds 5] [--duration 6] [--warmup 2] [--connections 32] [--out bench/results.md]
                       [--baseline [LABEL=]path/to/older/api_guard.wasm ...]
--baseline adds a configuration (named LABEL, default `baseline`): an earlier build of
api_guard.wasm with the same config, measured in the same rounds, so that a change to the request
path is reported against its baseline in one run (a column "/ LABEL" for api-guard). Repeat it to
measure several earlier builds.
"""

import argparse
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ENVOY = os.environ.get("ENVOY", str(ROOT / ".venv/bin/envoy"))
CLI = ROOT / "target/release/api-guard"
WASM = ROOT / "target/wasm32-wasip1/release/api_guard.wasm"
# The floor of any wasm filter (bench/empty-filter): built by `make bench`.
EMPTY_WASM = ROOT / "target/empty-filter/wasm32-wasip1/release/empty_filter.wasm"
FLOOR_WASM = ROOT / "target/hostcall-floor/wasm32-wasip1/release/hostcall_floor.wasm"
WASM_KINDS = {"api-guard": WASM, "empty-wasm": EMPTY_WASM, "hostcall-floor": FLOOR_WASM}
# The dynamic module (`make module`), loaded as module `api_guard` from this directory.
MODULE_DIR = Path(os.environ.get("API_GUARD_MODULE_DIR") or ROOT / "target/release")
MODULE = MODULE_DIR / "libapi_guard.so"
MODULE_KIND = "api-guard-module"
# Configurations of api-guard itself (ratios to native and bare are reported for them).
API_GUARD_KINDS = {*WASM_KINDS, MODULE_KIND}
# Earlier builds of api_guard.wasm given with --baseline (their labels, in order).
BASELINES = []
KEY = ROOT / "tests/keys/p256.json"
ISSUER = "https://issuer.bench.test"
AUDIENCE = "https://api.bench.test"
ORIGIN = "https://app.bench.test"
# Listener, upstream listener and admin ports of the benchmarked Envoy (loopback only).
PORT, UPSTREAM_PORT, ADMIN_PORT = 18000, 18001, 18901
NEVER_LIMIT = 1_000_000_000
LIMITED = 100  # requests per 60 s in the `limited` workload: nearly everything is refused

# What api-guard adds to a response over plain HTTP (the benchmark's listener): no
# strict-transport-security, which it sends only over TLS (RFC 6797 section 7.2).
SECURITY_HEADERS = [
    ("x-content-type-options", "nosniff"),
    ("x-frame-options", "DENY"),
    ("referrer-policy", "strict-origin-when-cross-origin"),
    ("permissions-policy", "camera=(), microphone=(), geolocation=()"),
    ("content-security-policy", "default-src 'none'; frame-ancestors 'none'"),
    ("cross-origin-opener-policy", "same-origin"),
    ("x-xss-protection", "0"),
]


def run(cmd, **kw):
    return subprocess.run(cmd, check=True, capture_output=True, text=True, **kw).stdout


def public_jwks():
    return json.loads(run([str(CLI), "jwks", "--key", str(KEY)]))


def mint(count, extra=()):
    out = run([str(CLI), "token", "--key", str(KEY), "--iss", ISSUER, "--aud", AUDIENCE,
               "--sub", "bench-user", "--ttl", "7200", "--count", str(count), *extra])
    return out.split()


def corrupt_signature(token):
    """Changes one character in the middle of the signature (canonical base64url stays valid)."""
    head, payload, sig = token.split(".")
    mid = len(sig) // 2
    swapped = "A" if sig[mid] != "A" else "B"
    return f"{head}.{payload}.{sig[:mid]}{swapped}{sig[mid + 1:]}"


def api_guard_config(limit):
    return {
        "jwt": {"providers": [{
            "name": "bench", "issuer": ISSUER, "audiences": [AUDIENCE], "algorithms": ["ES256"],
            "jwks": {"inline": public_jwks()},
            "claims_to_headers": [{"claim": "sub", "header": "x-user-id"}],
            "forward_token": False,
        }]},
        "routes": [{"name": "api", "match": {"path_prefix": "/"}, "auth": "jwt", "rate_limit": "bench"}],
        "rate_limits": {"bench": {"requests": limit, "window_seconds": 60, "key": "ip"}},
        "cors": {"allow_origins": [ORIGIN], "allow_methods": ["GET", "POST"],
                 "allow_headers": ["authorization", "content-type"], "allow_credentials": True,
                 "max_age_seconds": 600},
        "errors": {"rewrite_upstream": "5xx"},
    }


def indent(text, n):
    pad = " " * n
    return "\n".join(pad + line if line else line for line in text.splitlines())


def envoy_yaml(kind, limit):
    route_extra = ""
    vhost_extra = ""
    filters = ""
    if kind == "native":
        jwks = json.dumps(public_jwks())
        headers = "\n".join(
            f"- header: {{ key: {json.dumps(k)}, value: {json.dumps(v)} }}\n  append_action: OVERWRITE_IF_EXISTS_OR_ADD"
            for k, v in SECURITY_HEADERS)
        vhost_extra = f"""
response_headers_to_add:
{headers}
response_headers_to_remove: [server, x-powered-by, x-envoy-upstream-service-time]
typed_per_filter_config:
  envoy.filters.http.cors:
    "@type": type.googleapis.com/envoy.extensions.filters.http.cors.v3.CorsPolicy
    allow_origin_string_match: [ {{ exact: {json.dumps(ORIGIN)} }} ]
    allow_methods: "GET, POST"
    allow_headers: "authorization, content-type"
    allow_credentials: true
    max_age: "600"
"""
        filters = f"""
- name: envoy.filters.http.cors
  typed_config:
    "@type": type.googleapis.com/envoy.extensions.filters.http.cors.v3.Cors
- name: envoy.filters.http.jwt_authn
  typed_config:
    "@type": type.googleapis.com/envoy.extensions.filters.http.jwt_authn.v3.JwtAuthentication
    providers:
      bench:
        issuer: {json.dumps(ISSUER)}
        audiences: [{json.dumps(AUDIENCE)}]
        local_jwks: {{ inline_string: {json.dumps(jwks)} }}
        forward: false
        claim_to_headers: [ {{ header_name: x-user-id, claim_name: sub }} ]
        jwt_cache_config: {{ jwt_cache_size: 4096 }}
    rules:
    - match: {{ prefix: "/" }}
      requires: {{ provider_name: bench }}
- name: envoy.filters.http.local_ratelimit
  typed_config:
    "@type": type.googleapis.com/envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit
    stat_prefix: bench
    token_bucket: {{ max_tokens: {limit}, tokens_per_fill: {limit}, fill_interval: 60s }}
    filter_enabled: {{ default_value: {{ numerator: 100, denominator: HUNDRED }}, runtime_key: rl_enabled }}
    filter_enforced: {{ default_value: {{ numerator: 100, denominator: HUNDRED }}, runtime_key: rl_enforced }}
    enable_x_ratelimit_headers: DRAFT_VERSION_03
"""
    elif kind == MODULE_KIND:
        filters = f"""
- name: envoy.filters.http.dynamic_modules
  typed_config:
    "@type": type.googleapis.com/envoy.extensions.filters.http.dynamic_modules.v3.DynamicModuleFilter
    dynamic_module_config: {{ name: api_guard }}
    filter_name: api-guard
    filter_config:
      "@type": type.googleapis.com/google.protobuf.StringValue
      value: {json.dumps(json.dumps(api_guard_config(limit)))}
"""
    elif kind in WASM_KINDS:
        config = json.dumps(api_guard_config(limit)) if kind in ["api-guard", *BASELINES] else ""
        wasm = WASM_KINDS[kind]
        filters = f"""
- name: envoy.filters.http.wasm
  typed_config:
    "@type": type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm
    config:
      name: api-guard
      root_id: api-guard
      failure_policy: FAIL_CLOSED
      allow_on_headers_stop_iteration: true
      vm_config:
        vm_id: api-guard
        runtime: envoy.wasm.runtime.v8
        code: {{ local: {{ filename: {json.dumps(str(wasm))} }} }}
      configuration:
        "@type": type.googleapis.com/google.protobuf.StringValue
        value: {json.dumps(config)}
"""
    return f"""
admin:
  address: {{ socket_address: {{ address: 127.0.0.1, port_value: {ADMIN_PORT} }} }}
static_resources:
  listeners:
  - name: api
    address: {{ socket_address: {{ address: 127.0.0.1, port_value: {PORT} }} }}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: api
          server_header_transformation: PASS_THROUGH
          use_remote_address: true
          route_config:
            virtual_hosts:
            - name: api
              domains: ["*"]
{indent(vhost_extra, 14)}
              routes:
              - match: {{ prefix: "/" }}
                route: {{ cluster: upstream, timeout: 5s }}
{indent(route_extra, 16)}
          http_filters:
{indent(filters, 10)}
          - name: envoy.filters.http.router
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
  - name: upstream
    address: {{ socket_address: {{ address: 127.0.0.1, port_value: {UPSTREAM_PORT} }} }}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: upstream
          route_config:
            virtual_hosts:
            - name: upstream
              domains: ["*"]
              routes:
              - match: {{ prefix: "/" }}
                direct_response: {{ status: 200, body: {{ inline_string: '{{"documents":[{{"id":"doc-1","title":"Quarterly report"}}]}}' }} }}
          http_filters:
          - name: envoy.filters.http.router
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
  clusters:
  - name: upstream
    connect_timeout: 1s
    type: STATIC
    load_assignment:
      cluster_name: upstream
      endpoints:
      - lb_endpoints:
        - endpoint: {{ address: {{ socket_address: {{ address: 127.0.0.1, port_value: {UPSTREAM_PORT} }} }} }}
"""


WRK_LUA = """
local tokens = {}
for line in io.lines(os.getenv("BENCH_TOKENS")) do tokens[#tokens + 1] = line end
local origin = os.getenv("BENCH_ORIGIN")
local i = 0
request = function()
  i = i + 1
  if i > #tokens then i = 1 end
  return wrk.format("GET", "/api/documents", { ["Authorization"] = "Bearer " .. tokens[i], ["Origin"] = origin })
end
"""


def envoy_env():
    """Envoy's environment: the dynamic module is found on ENVOY_DYNAMIC_MODULES_SEARCH_PATH."""
    return dict(os.environ, ENVOY_DYNAMIC_MODULES_SEARCH_PATH=str(MODULE_DIR))


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def pinned(cpu):
    if shutil.which("taskset") and os.cpu_count() and os.cpu_count() >= 2:
        return ["taskset", "-c", str(cpu)]
    return []


def wait_ready(proc, timeout=30):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError("Envoy exited")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{ADMIN_PORT}/ready", timeout=1) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.1)
    raise RuntimeError("Envoy not ready")


def probe(token):
    req = urllib.request.Request(f"http://127.0.0.1:{PORT}/api/documents",
                                 headers={"Authorization": f"Bearer {token}", "Origin": ORIGIN})
    try:
        with urllib.request.urlopen(req, timeout=5) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code


def parse_wrk(text):
    def latency_ms(pct):
        m = re.search(rf"^\s+{pct}%\s+([\d.]+)(us|ms|s)\s*$", text, re.M)
        if not m:
            return float("nan")
        value, unit = float(m.group(1)), m.group(2)
        return value / 1000 if unit == "us" else value * 1000 if unit == "s" else value
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", text).group(1))
    non2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", text)
    total = re.search(r"(\d+) requests in", text)
    return {"rps": rps, "p50": latency_ms(50), "p99": latency_ms(99),
            "non2xx": int(non2xx.group(1)) if non2xx else 0, "requests": int(total.group(1)) if total else 0}


def measure(kind, workload, tokens_file, args, tmp, concurrency=1):
    """One run. `concurrency` 2 (the scaling rows) leaves Envoy's two workers and wrk unpinned:
    on this 2-core machine they share the cores."""
    limit = LIMITED if workload == "limited" else NEVER_LIMIT
    cfg = tmp / f"{kind}-{workload}.yaml"
    cfg.write_text(envoy_yaml(kind, limit))
    log = open(tmp / f"envoy-{kind}-{workload}-c{concurrency}.log", "w")
    envoy_cpu = pinned(0) if concurrency == 1 else []
    proc = subprocess.Popen(envoy_cpu + [ENVOY, "-c", str(cfg), "--concurrency", str(concurrency), "--disable-hot-restart",
                                        "--log-level", "info"], stdout=log, stderr=subprocess.STDOUT,
                            env=envoy_env())
    try:
        wait_ready(proc)
        first = Path(tokens_file).read_text().split()[0]
        status = probe(first)
        expected = {"hot": 200, "cold": 200, "reject": 401, "limited": 200}[workload]
        if kind in ("bare", "empty-wasm", "hostcall-floor"):
            expected = 200
        if status != expected:
            raise RuntimeError(f"{kind}/{workload}: probe answered {status}, expected {expected}")
        env = dict(os.environ, BENCH_TOKENS=str(tokens_file), BENCH_ORIGIN=ORIGIN)
        wrk_cpu = pinned(1) if concurrency == 1 else []
        wrk = wrk_cpu + ["wrk", "-t1", f"-c{args.connections}", "-s", str(tmp / "tokens.lua"), "--latency"]
        url = f"http://127.0.0.1:{PORT}/api/documents"
        subprocess.run(wrk + [f"-d{args.warmup}s", url], env=env, check=True, capture_output=True)
        rss_warm = rss_kib(proc.pid)
        out = subprocess.run(wrk + [f"-d{args.duration}s", url], env=env, check=True, capture_output=True, text=True).stdout
        result = parse_wrk(out)
        result["rss_warm"], result["rss_after"] = rss_warm, rss_kib(proc.pid)
        return result
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        log.close()


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--duration", type=int, default=6)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--workloads", default="hot,cold,reject,limited")
    parser.add_argument("--kinds", default="bare,empty-wasm,hostcall-floor,native,api-guard,api-guard-module",
                        help="configurations to run (the table needs native and api-guard)")
    parser.add_argument("--out", default=str(ROOT / "bench/results.md"))
    parser.add_argument("--baseline", action="append", default=[],
                        help="[LABEL=]an earlier api_guard.wasm, measured beside this one (repeatable)")
    parser.add_argument("--scaling", default="bare,hostcall-floor,native,api-guard,api-guard-module",
                        help="configurations also run with --concurrency 2 on `hot` (empty: none)")
    args = parser.parse_args()
    for given in args.baseline:
        label, _, path = given.rpartition("=") if "=" in given else ("baseline", "", given)
        if not Path(path).exists():
            sys.exit(f"{path} not found")
        if label in API_GUARD_KINDS or label in ("bare", "native"):
            sys.exit(f"--baseline label {label!r} is taken")
        WASM_KINDS[label] = Path(path)
        API_GUARD_KINDS.add(label)
        BASELINES.append(label)
    needed = [(ENVOY, "make envoy"), (CLI, "make cli"), (WASM, "make build"),
              (EMPTY_WASM, "make bench"), (FLOOR_WASM, "make bench")]
    if MODULE_KIND in args.kinds.split(","):
        needed.append((MODULE, "make module"))
    for path, make in needed:
        if not Path(path).exists():
            sys.exit(f"{path} not found: run `{make}`")
    if not shutil.which("wrk"):
        sys.exit("wrk not found: `make bench` installs it (Debian package wrk)")
    for port in (PORT, UPSTREAM_PORT, ADMIN_PORT):
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                sys.exit(f"port {port} is in use: stop what listens there first")

    tmp = Path(tempfile.mkdtemp(prefix="api-guard-bench-"))
    (tmp / "tokens.lua").write_text(WRK_LUA)
    print("minting tokens...", flush=True)
    hot = mint(1)
    cold = mint(20_000)
    reject = [corrupt_signature(t) for t in mint(1_000)]
    files = {}
    for name, tokens in [("hot", hot), ("cold", cold), ("reject", reject), ("limited", hot)]:
        files[name] = tmp / f"{name}.tokens"
        files[name].write_text("\n".join(tokens) + "\n")

    workloads = args.workloads.split(",")
    chosen = args.kinds.split(",")
    chosen.extend(BASELINES)
    hot_kinds = [k for k in ["bare", "empty-wasm", "hostcall-floor", "native", *BASELINES, "api-guard", MODULE_KIND]
                 if k in chosen]
    other_kinds = [k for k in ["native", *BASELINES, "api-guard", MODULE_KIND] if k in chosen]
    plan = [(w, k) for w in workloads for k in (hot_kinds if w == "hot" else other_kinds)]
    # The scaling rows: `hot` again with two workers (workload name "hot@2").
    scaling = [k for k in args.scaling.split(",") if k and k in chosen] if "hot" in workloads else []
    plan += [("hot@2", k) for k in scaling]
    results = {key: [] for key in plan}
    print(f"wrk -t1 -c{args.connections}: {args.duration}s per run after {args.warmup}s warm-up, "
          f"{args.rounds} rounds; Envoy --concurrency 1{' (pinned)' if pinned(0) else ''}", flush=True)
    for rnd in range(1, args.rounds + 1):
        for workload, kind in plan:
            base_workload, _, workers = workload.partition("@")
            r = measure(kind, base_workload, files[base_workload], args, tmp, int(workers or 1))
            results[(workload, kind)].append(r)
            print(f"  round {rnd} {workload:8} {kind:16} {r['rps']:10.0f} req/s  p50 {r['p50']:.2f} ms  "
                  f"p99 {r['p99']:.2f} ms  non-2xx {r['non2xx']}  RSS {r['rss_warm'] // 1024}->{r['rss_after'] // 1024} MiB",
                  flush=True)

    def med(workload, kind, field):
        return statistics.median(r[field] for r in results[(workload, kind)])

    def ratio(workload, kind, base):
        """The median of the per-round ratios: the two runs of a round are back to back, so a
        slow spell of this shared machine weighs on both sides of each ratio alike."""
        pairs = list(zip(results.get((workload, kind), []), results.get((workload, base), [])))
        if not pairs:
            return ""
        return f"{statistics.median(a['rps'] / b['rps'] for a, b in pairs):.2f}"

    base_col = "".join(f" / {b} |" for b in BASELINES)
    lines = ["| workload | configuration | median req/s | p50 ms | p99 ms | non-2xx (all rounds) | RSS growth | / native | / bare | / hostcall-floor |" + base_col,
             "|---|---|---|---|---|---|---|---|---|---|" + "---|" * len(BASELINES)]
    for workload in workloads + (["hot@2"] if scaling else []):
        kinds = {"hot": hot_kinds, "hot@2": scaling}.get(workload, other_kinds)
        for kind in kinds:
            rows = results[(workload, kind)]
            growth = max((r["rss_after"] - r["rss_warm"]) / r["rss_warm"] * 100 for r in rows if r["rss_warm"])
            ratio_native = ratio(workload, kind, "native") if kind in API_GUARD_KINDS else ""
            ratio_bare = ratio(workload, kind, "bare") if kind in API_GUARD_KINDS else ""
            lines.append(f"| {workload} | {kind} | {med(workload, kind, 'rps'):.0f} | {med(workload, kind, 'p50'):.2f} | "
                         f"{med(workload, kind, 'p99'):.2f} | {sum(r['non2xx'] for r in rows)} | {growth:+.1f}% | "
                         f"{ratio_native} | {ratio_bare} | {ratio(workload, kind, 'hostcall-floor') if kind == 'api-guard' else ''} |"
                         + "".join(f" {ratio(workload, kind, b) if kind == 'api-guard' else ''} |" for b in BASELINES))
    wasm_size = WASM.stat().st_size
    if scaling:
        lines += ["", "| configuration | hot, 1 worker (req/s) | hot, 2 workers (req/s) | 2 workers / 1 |", "|---|---|---|---|"]
        for kind in scaling:
            one, two = med("hot", kind, "rps"), med("hot@2", kind, "rps")
            lines.append(f"| {kind} | {one:.0f} | {two:.0f} | {two / one:.2f} |")
    table = "\n".join(lines)
    header = (f"Measured {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} by `make bench` "
              f"({args.rounds} rounds, {args.duration} s runs, {args.connections} connections, "
              f"Envoy 1.40 --concurrency 1; api_guard.wasm {wasm_size} bytes). Requests/s and latencies are "
              f"medians over the rounds; a ratio is the median of its per-round ratios (the two runs of "
              f"a round are back to back).\n\n")
    print()
    print(table)
    print(f"\napi_guard.wasm: {wasm_size} bytes")
    Path(args.out).write_text(header + table + "\n")
    print(f"saved to {args.out}")
    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
