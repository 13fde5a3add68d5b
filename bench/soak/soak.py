#!/usr/bin/env python3
"""The soak: the demo config (envoy/demo.yaml) at saturation for a long time, with a mix of
valid, refused and malformed requests over HTTP/1.1 (wrk + bench/soak/mix.lua) and HTTP/2
(h2load, several groups at once), then a report of what must not drift:

  - 5xx produced by the filter itself (target 0), told apart from the demo upstream's expected
    500s (/api/crash) and from Envoy's own local replies, by an access log of every 5xx
    (%RESPONSE_CODE_DETAILS%: `via_upstream` for the upstream's answers, empty for the filter's
    own replies, Envoy's reason otherwise) and by the error envelope's `code` of every HTTP/1.1
    answer;
  - Envoy's RSS (/proc/<pid>/status VmRSS) after warm-up and at the end (target: within 10%);
  - security events dropped by the `events.max_per_second` budget (the filter's
    `security_event_summary` lines, flushed per worker after the load);
  - whether every worker still answers at the end (fresh connections, per-worker listener
    stats), no wasm VM crashed or panicked, and every request of the mix still gets the answer
    it got at the start.

The Envoy config is demo.yaml itself, derived at run time into a temporary directory with three
changes only: its loopback ports (so the soak never collides with a running `make run`), the
wasm path made absolute, and a file access log of 5xx responses on the api listener.

  python3 bench/soak/soak.py [--seconds 600] [--out bench/soak-results.md] [--keep]

Everything listens on and talks to 127.0.0.1 only; every load is bounded in time (wrk -d,
h2load -D, a watchdog) and count (SOAK_MAX_REQUESTS in mix.lua); whatever the soak starts is
killed when it ends, however it ends.
"""

import argparse
import datetime
import hashlib
import hmac
import http.client
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent.parent
HERE = Path(__file__).resolve().parent
ENVOY = os.environ.get("ENVOY", str(ROOT / ".venv/bin/envoy"))
CLI = ROOT / "target/release/api-guard"
WASM = ROOT / "target/wasm32-wasip1/release/api_guard.wasm"
DEMO = ROOT / "envoy/demo.yaml"
DEMO_KEY = ROOT / "envoy/demo-keys/demo-es256.private.json"
LUA = HERE / "mix.lua"
DEMO_PORTS = {"api": 10000, "upstream": 10001, "admin": 9901}
HOST = "127.0.0.1"
CONCURRENCY = 2
PRINCIPALS = 256  # distinct demo tokens: the per-principal limits let valid requests through
FRESH_CONNECTIONS = 64  # the end-of-soak check that every worker answers

# Processes this soak started (process-group leaders); all are killed at the end.
STARTED = []


def log(msg):
    print(f"[soak {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def die(msg):
    print(f"soak: {msg}", file=sys.stderr, flush=True)
    sys.exit(1)


def start(cmd, **kw):
    proc = subprocess.Popen(cmd, start_new_session=True, **kw)
    STARTED.append(proc)
    return proc


def stop(proc, grace=10.0):
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    try:
        proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait()


def stop_all():
    for proc in reversed(STARTED):
        stop(proc, grace=5.0)


def on_signal(signum, _frame):
    raise SystemExit(f"soak: stopped by signal {signum}")


# --- the demo config ------------------------------------------------------------------------------

def demo_plugin_config(text):
    """The api-guard JSON of demo.yaml (the block scalar after `value: |`)."""
    lines = text.splitlines()
    for i, line in enumerate(lines):
        if re.match(r"^\s*value: \|\s*$", line):
            indent = len(line) - len(line.lstrip())
            body = []
            for nxt in lines[i + 1:]:
                if nxt.strip() and len(nxt) - len(nxt.lstrip()) <= indent:
                    break
                body.append(nxt)
            return json.loads("\n".join(body))
    die(f"no plugin configuration (value: |) in {DEMO}")


def demo_api_key(text, config):
    """The demo API key, published in demo.yaml's header comment, checked against its hash."""
    wanted = {k["sha256"]: k for k in config.get("api_keys", {}).get("keys", [])}
    for candidate in re.findall(r"\b(ag_demo_[A-Za-z0-9_-]{20,})", text):
        if hashlib.sha256(candidate.encode()).hexdigest() in wanted:
            return candidate
    return None


def derive_config(text, ports, access_log):
    """demo.yaml with other loopback ports, an absolute wasm path and a 5xx access log."""
    for name, demo_port in DEMO_PORTS.items():
        needle = f"port_value: {demo_port}"
        if needle not in text:
            die(f"{DEMO}: expected '{needle}' ({name})")
        text = text.replace(needle, f"port_value: {ports[name]}")
    if "filename: target/" not in text:
        die(f"{DEMO}: expected the wasm at 'filename: target/...'")
    text = text.replace("filename: target/", f"filename: {ROOT}/target/")
    m = re.search(r"^( *)stat_prefix: api\n", text, re.M)
    if not m:
        die(f"{DEMO}: expected 'stat_prefix: api' on the api listener")
    pad = m.group(1)
    fmt = ("%RESPONSE_CODE% [%RESPONSE_CODE_DETAILS%] [%RESPONSE_FLAGS%] %PROTOCOL% "
           "%REQ(:METHOD)% %REQ(:PATH)%\\n")
    block = "\n".join(pad + line for line in [
        "# soak only: every 5xx with Envoy's reason (via_upstream, empty for a filter reply)",
        "access_log:",
        "- name: envoy.access_loggers.file",
        "  filter:",
        "    status_code_filter:",
        "      comparison: { op: GE, value: { default_value: 500, runtime_key: soak_access_log_min } }",
        "  typed_config:",
        '    "@type": type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog',
        f"    path: {access_log}",
        f'    log_format: {{ text_format_source: {{ inline_string: "{fmt}" }} }}',
    ]) + "\n"
    return text[:m.end()] + block + text[m.end():]


# --- tokens, webhooks, the request mix -------------------------------------------------------------

def cli(*args):
    return subprocess.run([str(CLI), *args], check=True, capture_output=True, text=True).stdout.strip()


def mint(provider, sub, ttl, scope="documents:read", aud=None, extra=()):
    args = ["token", "--key", str(DEMO_KEY), "--iss", provider["issuer"],
            "--aud", aud or provider["audiences"][0], "--sub", sub, "--ttl", str(ttl), *extra]
    if scope:
        args += ["--scope", scope]
    return cli(*args)


def forge(token):
    """One character of the signature changed (still canonical base64url)."""
    head, payload, sig = token.split(".")
    mid = len(sig) // 2
    return f"{head}.{payload}.{sig[:mid]}{'A' if sig[mid] != 'A' else 'B'}{sig[mid + 1:]}"


def github_signature(secret, body):
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


class Entry:
    """One request of the mix. `expect`: the statuses it may get (the rate-limited ones may
    get 429 once their window is used up)."""

    def __init__(self, label, kind, method, path, headers=(), body=b"", expect=(200,)):
        self.label, self.kind, self.method, self.path = label, kind, method, path
        self.headers, self.body, self.expect = list(headers), body, set(expect)

    def raw(self, port):
        lines = [f"{self.method} {self.path} HTTP/1.1", f"Host: {HOST}:{port}"]
        lines += [f"{k}: {v}" for k, v in self.headers]
        if self.body or self.method in ("POST", "PUT", "PATCH"):
            lines.append(f"Content-Length: {len(self.body)}")
        return ("\r\n".join(lines) + "\r\n\r\n").encode() + self.body


def build_mix(ctx):
    """The HTTP/1.1 mix as rounds; round r uses principal r's token. Returns (check entries of
    round 0, every request of every round)."""
    allowed_origin = ctx["cors"]["allow_origins"][0]
    secret = ctx["webhook_secret"]
    hook_bodies = [json.dumps({"zen": f"soak delivery {i}", "hook_id": i}).encode() for i in range(4)]

    def round_entries(r):
        token, sub = ctx["tokens"][r % len(ctx["tokens"])]
        bearer = ("Authorization", f"Bearer {token}")
        hook = hook_bodies[r % len(hook_bodies)]
        other_hook = hook_bodies[(r + 1) % len(hook_bodies)]
        json_ct = ("Content-Type", "application/json")
        e = [
            # valid (per-principal windows: 429 only if a principal's window fills)
            Entry("jwt: GET /api/documents", "valid", "GET", "/api/documents", [bearer], expect=(200, 429)),
            Entry("jwt: GET /api/profile", "valid", "GET", "/api/profile", [bearer], expect=(200, 429)),
            Entry("jwt owner: GET /users/{sub}/documents", "valid", "GET", f"/users/{sub}/documents", [bearer],
                  expect=(200, 429)),
            Entry("jwt write: POST /api/documents", "valid", "POST", "/api/documents", [bearer, json_ct],
                  b'{"title":"soak"}', expect=(200, 429)),
            Entry("jwt + allowed Origin: GET /api/documents", "cors", "GET", "/api/documents",
                  [bearer, ("Origin", allowed_origin)], expect=(200, 429)),
            Entry("health: GET /healthz", "valid", "GET", "/healthz"),
            # the upstream's own 500 (rewritten to the envelope, code upstream_error)
            Entry("upstream 500: GET /api/crash", "upstream-5xx", "GET", "/api/crash", [bearer], expect=(500, 429)),
            # rate limits (per IP or per key: all soak clients are 127.0.0.1)
            Entry("api key: GET /internal/invoices", "limited", "GET", "/internal/invoices",
                  [("x-api-key", ctx["api_key"])], expect=(200, 429)),
            Entry("public: GET /public/docs", "limited", "GET", "/public/docs", expect=(200, 429)),
            Entry("login: POST /login", "limited", "POST", "/login", [json_ct],
                  b'{"user":"alice","password":"soak"}', expect=(200, 429)),
            Entry("password reset: POST /password-reset", "limited", "POST", "/password-reset", [json_ct],
                  b'{"email":"alice@example.com"}', expect=(202, 429)),
            # refused credentials (a refused credential counts against the route's rate limit by
            # IP, so once the soak has used up 127.0.0.1's window these get 429)
            Entry("no token: GET /api/documents", "refused", "GET", "/api/documents", expect=(401, 429)),
            Entry("forged signature", "refused", "GET", "/api/documents",
                  [("Authorization", f"Bearer {ctx['forged']}")], expect=(401, 429)),
            Entry("expired token", "refused", "GET", "/api/documents",
                  [("Authorization", f"Bearer {ctx['expired']}")], expect=(401, 429)),
            Entry("wrong audience", "refused", "GET", "/api/documents",
                  [("Authorization", f"Bearer {ctx['wrong_aud']}")], expect=(401, 429)),
            Entry("not a JWT", "malformed", "GET", "/api/documents",
                  [("Authorization", "Bearer not-a-jwt")], expect=(401, 429)),
            Entry("JWT with base64 padding", "malformed", "GET", "/api/documents",
                  [("Authorization", f"Bearer {token}==")], expect=(401, 429)),
            Entry("9 KB token", "malformed", "GET", "/api/documents",
                  [("Authorization", "Bearer " + "a" * 9000)], expect=(401, 429)),
            Entry("no scope: GET /users/{sub}/documents", "refused", "GET", f"/users/{ctx['noscope'][1]}/documents",
                  [("Authorization", f"Bearer {ctx['noscope'][0]}")], expect=(403, 429)),
            Entry("someone else's: GET /users/bob/documents", "refused", "GET", "/users/bob/documents", [bearer],
                  expect=(404, 429)),
            Entry("wrong API key", "refused", "GET", "/internal/invoices",
                  [("x-api-key", "ag_demo_" + "x" * 43)], expect=(401, 429)),
            # malformed URLs
            Entry("token in URL", "malformed", "GET", "/api/documents?access_token=abc", expect=(400,)),
            Entry("API key in URL", "malformed", "GET", "/public/docs?api_key=abc", expect=(400,)),
            Entry("path parameter: /admin;x=1/x", "malformed", "GET", "/admin;x=1/x", expect=(400,)),
            Entry("encoded dot segments: /a/%2e%2e/%2e%2e/x", "malformed", "GET", "/a/%2e%2e/%2e%2e/x",
                  expect=(400,)),
            Entry("%25 in path: /api/%25", "malformed", "GET", "/api/%25", [bearer], expect=(400,)),
            Entry("no route: GET /nope", "refused", "GET", "/nope", expect=(404,)),
            # CORS preflights
            Entry("preflight allowed", "cors", "OPTIONS", "/api/documents",
                  [("Origin", allowed_origin), ("Access-Control-Request-Method", "GET"),
                   ("Access-Control-Request-Headers", "authorization")], expect=(204,)),
            Entry("preflight, origin refused", "cors", "OPTIONS", "/api/documents",
                  [("Origin", "https://evil.example"), ("Access-Control-Request-Method", "GET")], expect=(403,)),
            Entry("preflight, method refused", "cors", "OPTIONS", "/api/documents",
                  [("Origin", allowed_origin), ("Access-Control-Request-Method", "PATCH")], expect=(403,)),
            # webhooks (GitHub scheme: X-Hub-Signature-256 = HMAC-SHA256 of the body)
            Entry("webhook, valid signature", "webhook", "POST", "/webhooks/github",
                  [json_ct, ("X-GitHub-Event", "push"), ("X-Hub-Signature-256", github_signature(secret, hook))],
                  hook, expect=(204,)),
            Entry("webhook, wrong secret", "webhook", "POST", "/webhooks/github",
                  [json_ct, ("X-Hub-Signature-256", github_signature("not-the-demo-secret-0123456789", hook))],
                  hook, expect=(400,)),
            Entry("webhook, signature of another body", "webhook", "POST", "/webhooks/github",
                  [json_ct, ("X-Hub-Signature-256", github_signature(secret, other_hook))], hook, expect=(400,)),
            Entry("webhook, no signature", "webhook", "POST", "/webhooks/github", [json_ct], hook, expect=(400,)),
        ]
        return e

    rounds = [round_entries(r) for r in range(len(ctx["tokens"]))]
    return rounds[0], [entry for rnd in rounds for entry in rnd]


def h2_groups(ctx, workdir):
    """HTTP/2 load: one h2load per header set (h2load sends the same headers to every URI it
    rotates through). `expect`: status classes the group may see."""
    allowed_origin = ctx["cors"]["allow_origins"][0]
    token, sub = ctx["h2_token"]
    hook = json.dumps({"zen": "soak over h2"}).encode()
    hook_file = workdir / "h2-webhook.json"
    hook_file.write_bytes(hook)
    good_sig = github_signature(ctx["webhook_secret"], hook)
    bad_sig = github_signature("not-the-demo-secret-0123456789", hook)
    ct = ("content-type", "application/json")
    return [
        {"name": "jwt (one principal) + /api/crash", "headers": [("authorization", f"Bearer {token}")],
         "paths": {"/api/documents": (200, 429), f"/users/{sub}/documents": (200, 429),
                   "/api/profile": (200, 429), "/api/crash": (500, 429), "/users/bob/documents": (404, 429),
                   "/api/%25": (400,)}, "expect": {"2xx", "4xx", "5xx"}},
        {"name": "anonymous: public, health, refused, malformed", "headers": [],
         "paths": {"/healthz": (200,), "/public/docs": (200, 429), "/api/documents": (401, 429),
                   "/admin;x=1/x": (400,), "/a/%2e%2e/%2e%2e/x": (400,),
                   "/api/documents?access_token=abc": (400,), "/nope": (404,)},
         "expect": {"2xx", "4xx"}},
        {"name": "forged token", "headers": [("authorization", f"Bearer {ctx['forged']}")],
         "paths": {"/api/documents": (401, 429), "/api/profile": (401, 429)}, "expect": {"4xx"}},
        {"name": "API key", "headers": [("x-api-key", ctx["api_key"])],
         "paths": {"/internal/invoices": (200, 429)}, "expect": {"2xx", "4xx"}},
        {"name": "webhook, valid signature", "headers": [ct, ("x-hub-signature-256", good_sig)],
         "data": hook_file, "paths": {"/webhooks/github": (204,)}, "expect": {"2xx"}},
        {"name": "webhook, wrong secret", "headers": [ct, ("x-hub-signature-256", bad_sig)],
         "data": hook_file, "paths": {"/webhooks/github": (400,)}, "expect": {"4xx"}},
        {"name": "preflight allowed", "method": "OPTIONS",
         "headers": [("origin", allowed_origin), ("access-control-request-method", "GET")],
         "paths": {"/api/documents": (204,)}, "expect": {"2xx"}},
        {"name": "preflight, origin refused", "method": "OPTIONS",
         "headers": [("origin", "https://evil.example"), ("access-control-request-method", "GET")],
         "paths": {"/api/documents": (403,)}, "expect": {"4xx"}},
    ]


# --- talking to Envoy ----------------------------------------------------------------------------

def port_free(port):
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((HOST, port))
            return True
        except OSError:
            return False


def admin_get(ports, path, timeout=5):
    with urllib.request.urlopen(f"http://{HOST}:{ports['admin']}{path}", timeout=timeout) as r:
        return r.read().decode()


def stats(ports):
    out = {}
    for line in admin_get(ports, "/stats").splitlines():
        name, _, value = line.partition(": ")
        if value.isdigit():
            out[name] = int(value)
    return out


def wait_ready(proc, ports, timeout=60):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            die(f"Envoy exited with {proc.returncode} before it was ready")
        try:
            if admin_get(ports, "/ready", timeout=1).strip() == "LIVE":
                return
        except OSError:
            pass
        time.sleep(0.2)
    die("Envoy not ready in time")


def rss_kib(pid):
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def cpu_seconds(pid):
    """User + system CPU time of a process (all its threads), in seconds."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return None


def send_raw(port, raw, timeout=10):
    """One request on a fresh connection: (status, body) or (None, error)."""
    try:
        with socket.create_connection((HOST, port), timeout=timeout) as sock:
            sock.sendall(raw)
            resp = http.client.HTTPResponse(sock, method=raw.split(b" ", 1)[0].decode())
            resp.begin()
            return resp.status, resp.read()
    except (OSError, http.client.HTTPException) as e:
        return None, str(e).encode()


def envelope_code(body):
    m = re.search(rb'"code":"([A-Za-z0-9_]+)"', body or b"")
    return m.group(1).decode() if m else "-"


def check_h1(entries, port):
    out = []
    for e in entries:
        status, body = send_raw(port, e.raw(port))
        out.append((e, status, envelope_code(body)))
    return out


def check_h2(groups, port):
    """Every URI of every h2 group once, over HTTP/2 with prior knowledge (curl)."""
    out = []
    for g in groups:
        for path, expect in g["paths"].items():
            cmd = ["curl", "-s", "-o", "/dev/null", "-w", "%{http_code} %{http_version}",
                   "--http2-prior-knowledge", "--max-time", "10", "--path-as-is"]
            if g.get("method"):
                cmd += ["-X", g["method"]]
            for k, v in g["headers"]:
                cmd += ["-H", f"{k}: {v}"]
            if g.get("data"):
                cmd += ["--data-binary", f"@{g['data']}"]
            cmd.append(f"http://{HOST}:{port}{path}")
            res = subprocess.run(cmd, capture_output=True, text=True, timeout=20).stdout.split()
            status = int(res[0]) if res and res[0].isdigit() else None
            version = res[1] if len(res) > 1 else "?"
            out.append((g["name"], path, set(expect), status, version))
    return out


def worker_check(ports, stats_before):
    """FRESH_CONNECTIONS requests, each on a new connection (the kernel spreads them over the
    workers' listeners); half /healthz (200), half /nope (404 from the filter: an event, which
    also flushes the worker's pending security_event_summary). Returns (ok, sent, per-worker new
    connections, stats after)."""
    ok = 0
    for i in range(FRESH_CONNECTIONS):
        path, want = ("/healthz", 200) if i % 2 == 0 else ("/nope", 404)
        raw = f"GET {path} HTTP/1.1\r\nHost: {HOST}:{ports['api']}\r\nConnection: close\r\n\r\n".encode()
        status, _ = send_raw(ports["api"], raw)
        ok += status == want
    time.sleep(0.5)
    after = stats(ports)
    per_worker = {}
    for w in range(CONCURRENCY):
        name = f"listener.{HOST}_{ports['api']}.worker_{w}.downstream_cx_total"
        per_worker[w] = after.get(name, 0) - stats_before.get(name, 0)
    return ok, FRESH_CONNECTIONS, per_worker, after


# --- parsing --------------------------------------------------------------------------------------

def parse_wrk_out(path):
    res = {"counts": {}, "requests": 0, "errors": [0] * 5, "latency_us": {}, "duration_us": 0}
    if not path.exists():
        return res
    for line in path.read_text().splitlines():
        parts = line.split()
        if parts[0] == "count":
            res["counts"][(int(parts[1]), parts[2])] = int(parts[3])
        elif parts[0] == "requests":
            res["requests"] = int(parts[1])
        elif parts[0] == "duration_us":
            res["duration_us"] = int(parts[1])
        elif parts[0] == "errors":
            res["errors"] = [int(x) for x in parts[1:]]
        elif parts[0] == "latency_us":
            res["latency_us"][parts[1]] = int(parts[2])
        elif parts[0] == "latency_max_us":
            res["latency_us"]["max"] = int(parts[1])
    return res


def parse_h2load(text):
    res = {"total": 0, "done": 0, "succeeded": 0, "failed": 0, "errored": 0, "timeout": 0,
           "2xx": 0, "3xx": 0, "4xx": 0, "5xx": 0, "rps": 0.0, "mean": "?", "max": "?"}
    m = re.search(r"requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, (\d+) failed, "
                  r"(\d+) errored, (\d+) timeout", text)
    if m:
        res.update(total=int(m[1]), done=int(m[3]), succeeded=int(m[4]), failed=int(m[5]),
                   errored=int(m[6]), timeout=int(m[7]))
    m = re.search(r"status codes: (\d+) 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx", text)
    if m:
        res.update({"2xx": int(m[1]), "3xx": int(m[2]), "4xx": int(m[3]), "5xx": int(m[4])})
    m = re.search(r"finished in [\d.]+\w*, ([\d.]+) req/s", text)
    if m:
        res["rps"] = float(m[1])
    m = re.search(r"time for request:\s+(\S+)\s+(\S+)\s+(\S+)", text)
    if m:
        res["max"], res["mean"] = m[2], m[3]
    return res


LOG_LINE = re.compile(r"^\[[^\]]+\]\[(\d+)\]\[(\w+)\]\[([\w-]+)\]")


def parse_envoy_log(path):
    """Security events written and suppressed (per thread), and anything that looks like a
    crash or a fail-closed path of the filter."""
    res = {"events": {}, "suppressed": {}, "summaries": 0, "failing_closed": 0, "panics": 0,
           "vm_failures": 0, "critical": 0, "errors": {}, "events_by_code": {}, "lines": 0}
    if not path.exists():
        return res
    vm_fail = re.compile(r"wasm vm (failed|crash)|Function: \S+ failed|Plugin .* failed|vm_reload|"
                         r"wasm.*(abort|unreachable|trap)", re.I)
    with path.open(errors="replace") as f:
        for line in f:
            res["lines"] += 1
            m = LOG_LINE.match(line)
            tid = m.group(1) if m else "?"
            level = m.group(2) if m else "?"
            if '"type":"security_event_summary"' in line:
                res["summaries"] += 1
                s = re.search(r'"suppressed":(\d+)', line)
                res["suppressed"][tid] = res["suppressed"].get(tid, 0) + int(s.group(1) if s else 0)
            elif '"type":"security_event"' in line:
                res["events"][tid] = res["events"].get(tid, 0) + 1
                c = re.search(r'"code":"(\w+)","status":(\d+)', line)
                if c:
                    key = (int(c.group(2)), c.group(1))
                    res["events_by_code"][key] = res["events_by_code"].get(key, 0) + 1
            if "failing closed" in line:
                res["failing_closed"] += 1
            if "panicked" in line or "panic" in line.lower() and "wasm" in line.lower():
                res["panics"] += 1
            if vm_fail.search(line):
                res["vm_failures"] += 1
            if level == "critical":
                res["critical"] += 1
            if level in ("error", "critical"):
                text = re.sub(r"^\[[^\]]+\]\[\d+\]", "", line.strip())
                text = re.sub(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}", "<id>", text)
                res["errors"][text[:300]] = res["errors"].get(text[:300], 0) + 1
    return res


def parse_access_log(path):
    """5xx by (status, details, flags, protocol) and by origin."""
    by_key, by_origin = {}, {"upstream": 0, "filter": 0, "envoy": 0}
    if not path.exists():
        return by_key, by_origin
    pat = re.compile(r"^(\d+) \[([^\]]*)\] \[([^\]]*)\] (\S+) (\S+) (\S+)")
    with path.open(errors="replace") as f:
        for line in f:
            m = pat.match(line)
            if not m:
                continue
            status, details, flags, proto, _method, path_ = m.groups()
            if details == "via_upstream":
                origin = "upstream"
            elif details in ("", "-") or details.startswith("wasm"):
                origin = "filter"
            else:
                origin = "envoy"
            by_origin[origin] += 1
            key = (int(status), details or "(none: a filter reply)", flags, proto, path_.split("?")[0], origin)
            by_key[key] = by_key.get(key, 0) + 1
    return by_key, by_origin


# --- the soak -------------------------------------------------------------------------------------

def mib(kib):
    return f"{kib / 1024:.1f} MiB" if kib is not None else "?"


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=int, default=int(os.environ.get("SOAK_SECONDS", "600")))
    ap.add_argument("--out", default=str(ROOT / "bench/soak-results.md"))
    ap.add_argument("--port-base", type=int, default=int(os.environ.get("SOAK_PORT_BASE", "19000")),
                    help="api on BASE, upstream on BASE+1, admin on BASE+901 (127.0.0.1)")
    ap.add_argument("--wrk-connections", type=int, default=32)
    ap.add_argument("--h2-streams", type=int, default=2, help="concurrent streams per h2load group")
    ap.add_argument("--keep", action="store_true", help="keep the work directory (logs)")
    args = ap.parse_args()
    if args.seconds < 10:
        die("--seconds must be at least 10")

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGHUP, on_signal)

    for path, hint in [(WASM, "make build"), (CLI, "make cli"), (Path(ENVOY), "make envoy"), (DEMO_KEY, "")]:
        if not path.exists():
            die(f"{path} missing" + (f": run `{hint}`" if hint else ""))
    for tool in ("wrk", "h2load", "curl"):
        if not shutil.which(tool):
            die(f"{tool} not found (make soak installs wrk and nghttp2-client)")

    ports = {"api": args.port_base, "upstream": args.port_base + 1, "admin": args.port_base + 901}
    for name, port in ports.items():
        if not port_free(port):
            die(f"{HOST}:{port} ({name}) is in use: pick other ports with SOAK_PORT_BASE")

    workdir = Path(tempfile.mkdtemp(prefix="api-guard-soak-"))
    log(f"work directory {workdir}")
    try:
        return soak(args, ports, workdir)
    finally:
        stop_all()
        if args.keep:
            log(f"logs kept in {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)


def soak(args, ports, workdir):
    seconds = args.seconds
    demo_text = DEMO.read_text()
    config = demo_plugin_config(demo_text)
    provider = config["jwt"]["providers"][0]
    api_key = demo_api_key(demo_text, config)
    if not api_key:
        die("demo API key not found in demo.yaml's comments (or its hash does not match)")
    webhooks = config.get("webhooks", {})
    github = next((w for w in webhooks.values() if w.get("scheme") == "github"), None)
    if not github:
        die("demo.yaml has no github webhook")
    events_budget = config.get("events", {}).get("max_per_second", 200)

    access_log = workdir / "access-5xx.log"
    envoy_log = workdir / "envoy.log"
    cfg = workdir / "soak.yaml"
    cfg.write_text(derive_config(demo_text, ports, access_log))

    log(f"minting {PRINCIPALS} demo tokens")
    ttl = min(seconds + 3600, provider.get("max_lifetime_seconds", 86400) - 60)
    now = int(time.time())
    tokens = [(mint(provider, f"soak-{i:03d}", ttl), f"soak-{i:03d}") for i in range(PRINCIPALS)]
    ctx = {
        "tokens": tokens,
        "h2_token": (mint(provider, "soak-h2", ttl), "soak-h2"),
        "noscope": (mint(provider, "soak-noscope", ttl, scope=None), "soak-noscope"),
        "forged": forge(tokens[0][0]),
        "expired": mint(provider, "soak-expired", ttl, extra=["--claim", f"iat={now - 7200}",
                                                            "--claim", f"exp={now - 3600}"]),
        "wrong_aud": mint(provider, "soak-aud", ttl, aud="https://elsewhere.example"),
        "api_key": api_key,
        "webhook_secret": github["secrets"][0],
        "cors": config["cors"],
    }
    check_entries, mix = build_mix(ctx)
    mix_file = workdir / "mix.bin"
    mix_file.write_bytes(b"\0".join(e.raw(ports["api"]) for e in mix))
    groups = h2_groups(ctx, workdir)

    log(f"starting Envoy (--concurrency {CONCURRENCY}) on {HOST}:{ports['api']}, admin :{ports['admin']}")
    envoy = start([ENVOY, "-c", str(cfg), "--concurrency", str(CONCURRENCY), "--log-level", "info",
                   "--disable-hot-restart", "--log-path", str(envoy_log)], cwd=ROOT,
                  stdout=subprocess.DEVNULL, stderr=(workdir / "envoy.stderr").open("w"))
    wait_ready(envoy, ports)
    version = re.search(r'"version":\s*"([^"]+)"', admin_get(ports, "/server_info"))
    envoy_version = version.group(1) if version else "?"
    rss_idle = rss_kib(envoy.pid)
    stats_start = stats(ports)

    log("mix check (start): every request once, HTTP/1.1 and HTTP/2")
    h1_start = check_h1(check_entries, ports["api"])
    h2_start = check_h2(groups, ports["api"])

    log(f"load: {seconds}s of wrk (HTTP/1.1, {args.wrk_connections} connections, "
        f"{len(check_entries)} request kinds x {PRINCIPALS} principals) and {len(groups)} h2load groups")
    wrk_out = workdir / "wrk.counts"
    env = dict(os.environ, SOAK_MIX=str(mix_file), SOAK_WRK_OUT=str(wrk_out),
               SOAK_MAX_REQUESTS=str(seconds * 100_000))
    loads = [("wrk", start(["wrk", "-t", "1", "-c", str(args.wrk_connections), "-d", f"{seconds}s",
                            "--timeout", "10s", "-s", str(LUA), f"http://{HOST}:{ports['api']}/"],
                           env=env, stdout=(workdir / "wrk.stdout").open("w"), stderr=subprocess.STDOUT))]
    for i, g in enumerate(groups):
        cmd = ["h2load", "-D", str(seconds), "-t", "1", "-c", "1", "-m", str(args.h2_streams)]
        if g.get("method"):
            cmd += ["-H", f":method: {g['method']}"]
        for k, v in g["headers"]:
            cmd += ["-H", f"{k}: {v}"]
        if g.get("data"):
            cmd += ["-d", str(g["data"])]
        cmd += [f"http://{HOST}:{ports['api']}{p}" for p in g["paths"]]
        g["out"] = workdir / f"h2load-{i}.out"
        loads.append((g["name"], start(cmd, stdout=g["out"].open("w"), stderr=subprocess.STDOUT)))

    warm_at = min(60, max(5, seconds // 10))
    t0 = time.time()
    cpu0 = cpu_seconds(envoy.pid)
    samples, rss_warm, next_sample, next_report = [], None, 0.0, 60.0
    deadline = t0 + seconds + 60
    while any(p.poll() is None for _, p in loads):
        elapsed = time.time() - t0
        if envoy.poll() is not None:
            log(f"Envoy exited with {envoy.returncode} during the load")
            break
        if elapsed >= next_sample:
            rss = rss_kib(envoy.pid)
            samples.append((round(elapsed), rss))
            if rss_warm is None and elapsed >= warm_at:
                rss_warm = rss
            next_sample += 5
        if elapsed >= next_report:
            log(f"{int(elapsed)}s/{seconds}s, Envoy RSS {mib(samples[-1][1])}")
            next_report += 60
        if time.time() > deadline:
            log("watchdog: a load generator overran its duration; stopping it")
            for _, p in loads:
                stop(p)
            break
        time.sleep(0.5)
    rss_loaded = rss_kib(envoy.pid)
    load_seconds = time.time() - t0
    cpu1 = cpu_seconds(envoy.pid)
    envoy_cores = (cpu1 - cpu0) / load_seconds if cpu0 is not None and cpu1 is not None else None
    loadavg = Path("/proc/loadavg").read_text().split()[:3]
    stats_loaded = stats(ports) if envoy.poll() is None else {}

    alive = envoy.poll() is None
    if alive:
        # Let every worker's event budget window pass, so the next event flushes its summary.
        time.sleep(2.0)
        log(f"worker check: {FRESH_CONNECTIONS} requests on fresh connections")
        fresh_ok, fresh_sent, per_worker, stats_end = worker_check(ports, stats_loaded)
        log("mix check (end)")
        h1_end = check_h1(check_entries, ports["api"])
        h2_end = check_h2(groups, ports["api"])
        rss_end = rss_kib(envoy.pid)
    else:
        fresh_ok, fresh_sent, per_worker, stats_end = 0, FRESH_CONNECTIONS, {}, {}
        h1_end, h2_end, rss_end = [], [], None
    stop(envoy, grace=15.0)  # flushes the access log

    wrk = parse_wrk_out(wrk_out)
    h2 = {g["name"]: parse_h2load(g["out"].read_text(errors="replace")) for g in groups}
    elog = parse_envoy_log(envoy_log)
    a5xx, origins = parse_access_log(access_log)

    report = render(locals())
    print(report)
    Path(args.out).write_text(report)
    log(f"wrote {args.out}")
    return 0


def git(*args):
    try:
        return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "?"


def render(v):
    seconds, wrk, h2, elog = v["seconds"], v["wrk"], v["h2"], v["elog"]
    groups, origins, a5xx = v["groups"], v["origins"], v["a5xx"]
    stats_start, stats_end = v["stats_start"], v["stats_end"] or v["stats_loaded"]
    load_seconds = v["load_seconds"]
    ports = v["ports"]

    h1_total = sum(wrk["counts"].values())
    h2_total = sum(g["done"] for g in h2.values())
    total = h1_total + h2_total

    # 5xx made by the filter: from the access log (every 5xx, every protocol) and, for HTTP/1.1,
    # the envelope code service_unavailable of every answer.
    filter_5xx = origins["filter"]
    envoy_5xx = origins["envoy"]
    upstream_5xx = origins["upstream"]
    h1_503 = sum(n for (s, c), n in wrk["counts"].items() if s >= 500 and c == "service_unavailable")
    h1_5xx = sum(n for (s, _), n in wrk["counts"].items() if s >= 500)
    h2_5xx_outside_crash = sum(h2[g["name"]]["5xx"] for g in groups if "5xx" not in g["expect"])
    down_5xx = stats_end.get("http.api.downstream_rq_5xx", 0) - stats_start.get("http.api.downstream_rq_5xx", 0)
    up_5xx = (stats_end.get("cluster.demo_upstream.upstream_rq_5xx", 0)
              - stats_start.get("cluster.demo_upstream.upstream_rq_5xx", 0))

    rss_warm, rss_end, rss_idle, rss_loaded = v["rss_warm"], v["rss_end"], v["rss_idle"], v["rss_loaded"]
    growth = (rss_end - rss_warm) / rss_warm * 100 if rss_warm and rss_end else None
    rss_values = [r for _, r in v["samples"] if r]
    rss_peak = max(rss_values) if rss_values else None

    refusals = (sum(n for (s, _), n in wrk["counts"].items() if s >= 400)
                + sum(g["4xx"] + g["5xx"] for g in h2.values()))
    suppressed = sum(elog["suppressed"].values())
    written = sum(elog["events"].values())
    budget = v["events_budget"]

    vm_created = (stats_end.get("wasm.envoy.wasm.runtime.v8.created", 0)
                  - stats_start.get("wasm.envoy.wasm.runtime.v8.created", 0))
    vm_active_start = stats_start.get("wasm.envoy.wasm.runtime.v8.active", 0)
    vm_active_end = stats_end.get("wasm.envoy.wasm.runtime.v8.active", 0)
    vm_reload = sum(n for k, n in stats_end.items() if k.startswith("wasm.api-guard.vm_reload"))
    per_worker = v["per_worker"]
    workers_ok = (v["alive"] and v["fresh_ok"] == v["fresh_sent"] and len(per_worker) == CONCURRENCY
                  and all(n > 0 for n in per_worker.values()))
    crashes = elog["panics"] + elog["vm_failures"] + vm_created + vm_reload
    if vm_active_end != vm_active_start:
        crashes += 1

    def mix_ok(results):
        return sum(1 for e, s, _ in results if s in e.expect), len(results)

    def mix2_ok(results):
        return sum(1 for _, _, exp, s, ver in results if s in exp and ver == "2"), len(results)

    h1s, h1e = mix_ok(v["h1_start"]), mix_ok(v["h1_end"])
    h2s, h2e = mix2_ok(v["h2_start"]), mix2_ok(v["h2_end"])
    mix_pass = h1s[0] == h1s[1] and h1e[0] == h1e[1] and h2s[0] == h2s[1] and h2e[0] == h2e[1] and h1e[1] > 0

    def verdict(ok):
        return "pass" if ok else "**FAIL**"

    commit = git("rev-parse", "--short", "HEAD")
    wasm_sha = hashlib.sha256(WASM.read_bytes()).hexdigest()[:12] if WASM.exists() else "?"
    dirty = git("status", "--porcelain", "--untracked-files=no")
    out = []
    w = out.append
    w("# api-guard soak results")
    w("")
    w(f"`make soak` (bench/soak/soak.py), {datetime.datetime.now().strftime('%Y-%m-%d %H:%M')}: the demo config "
      f"(envoy/demo.yaml, on 127.0.0.1:{ports['api']}) at saturation for {seconds} s; Envoy "
      f"{v['envoy_version']}, `--concurrency {CONCURRENCY}`; commit {commit}"
      + (" with uncommitted changes in the work tree" if dirty and dirty != "?" else "")
      + f" (api_guard.wasm sha256 {wasm_sha}…).")
    w("HTTP/1.1: wrk, 1 thread, "
      f"{v['args'].wrk_connections} connections, rotating through {len(v['check_entries'])} kinds of request x "
      f"{PRINCIPALS} demo principals (bench/soak/mix.lua). HTTP/2: {len(groups)} h2load groups at once, 1 "
      f"connection x {v['args'].h2_streams} streams each. The machine has 2 cores, shared with the load "
      "generators and whatever else runs on it.")
    w("")
    w("| | result | target | |")
    w("|---|---|---|---|")
    w(f"| requests answered | {total:,} in {load_seconds:.0f} s ({total / load_seconds:,.0f}/s): "
      f"HTTP/1.1 {h1_total:,}, HTTP/2 {h2_total:,} | | |")
    w(f"| 5xx produced by the filter | {filter_5xx} (HTTP/1.1 envelopes `service_unavailable`: {h1_503}; "
      f"`failing closed` log lines: {elog['failing_closed']}) | 0 | {verdict(filter_5xx == 0 and h1_503 == 0 and elog['failing_closed'] == 0)} |")
    w(f"| 5xx from Envoy's own local replies (not the filter's) | {envoy_5xx} | | |")
    w(f"| 5xx from the upstream (expected: /api/crash's 500, as `upstream_error`) | {upstream_5xx:,} "
      f"(Envoy stats: {down_5xx:,} downstream 5xx, {up_5xx:,} upstream 5xx) | expected | |")
    w(f"| Envoy RSS | idle {mib(rss_idle)}; after {v['warm_at']} s of load {mib(rss_warm)}; end of load "
      f"{mib(rss_loaded)}; end {mib(rss_end)} (peak {mib(rss_peak)}); end vs. warm: "
      + (f"{growth:+.1f}%" if growth is not None else "?") + " | within 10% | "
      + verdict(growth is not None and abs(growth) <= 10) + " |")
    w(f"| security events dropped by `events.max_per_second` ({budget}/s per worker) | {suppressed:,} "
      f"suppressed, {written:,} written ({elog['summaries']:,} summary lines); written + suppressed = "
      f"{written + suppressed:,}, for {refusals:,} answers >= 400 under load (the checks and the "
      "`authz_allowed` events of allowed requests add a few) | reported | |")
    w(f"| every worker answers at the end | {v['fresh_ok']}/{v['fresh_sent']} fresh connections answered as "
      f"expected; new connections per worker: "
      + ", ".join(f"worker_{k} {n}" for k, n in sorted(per_worker.items())) + f" | all | {verdict(workers_ok)} |")
    w(f"| wasm VM crashes | panics in the log: {elog['panics']}; VM failure lines: {elog['vm_failures']}; "
      f"V8 VMs created during the soak: {vm_created}; active {vm_active_start} -> {vm_active_end}; "
      f"vm_reload*: {vm_reload} | 0 | {verdict(crashes == 0)} |")
    w(f"| every request of the mix answers as expected | start: HTTP/1.1 {h1s[0]}/{h1s[1]}, HTTP/2 "
      f"{h2s[0]}/{h2s[1]}; end: HTTP/1.1 {h1e[0]}/{h1e[1]}, HTTP/2 {h2e[0]}/{h2e[1]} | all | {verdict(mix_pass)} |")
    w(f"| load generator errors | wrk connect/read/write/timeout: {wrk['errors'][0]}/{wrk['errors'][1]}/"
      f"{wrk['errors'][2]}/{wrk['errors'][4]}; h2load errored/timeout: "
      f"{sum(g['errored'] for g in h2.values())}/{sum(g['timeout'] for g in h2.values())}; "
      f"HTTP/2 5xx outside the /api/crash group: {h2_5xx_outside_crash} | 0 | "
      f"{verdict(sum(wrk['errors'][:3]) + wrk['errors'][4] == 0 and h2_5xx_outside_crash == 0 and sum(g['errored'] + g['timeout'] for g in h2.values()) == 0)} |")
    cores = v["envoy_cores"]
    w(f"| Envoy CPU under load | {cores:.2f} of the machine's 2 cores (load average at the end: "
      f"{' '.join(v['loadavg'])}) | | |" if cores is not None else "| Envoy CPU under load | ? | | |")
    lat = wrk["latency_us"]
    if lat:
        w(f"| HTTP/1.1 latency (wrk) | p50 {lat.get('50', 0) / 1000:.1f} ms, p99 {lat.get('99', 0) / 1000:.1f} ms, "
          f"p99.9 {lat.get('99.9', 0) / 1000:.1f} ms, max {lat.get('max', 0) / 1000:.1f} ms | | |")
    w("")
    w("## HTTP/1.1 answers by status and error-envelope code (wrk, every response)")
    w("")
    w("| status | code | responses | share |")
    w("|---|---|---|---|")
    for (s, c), n in sorted(wrk["counts"].items(), key=lambda kv: (kv[0][0], -kv[1])):
        w(f"| {s} | {c if c != '-' else '(no envelope)'} | {n:,} | {n / max(h1_total, 1) * 100:.1f}% |")
    w("")
    w("## HTTP/2 groups (h2load, status classes)")
    w("")
    w("| group | paths | answered | 2xx | 4xx | 5xx | errored/timeout | req/s | expected |")
    w("|---|---|---|---|---|---|---|---|---|")
    for g in groups:
        r = h2[g["name"]]
        w(f"| {g['name']} | {len(g['paths'])} | {r['done']:,} | {r['2xx']:,} | {r['4xx']:,} | {r['5xx']:,} | "
          f"{r['errored']}/{r['timeout']} | {r['rps']:,.0f} | {', '.join(sorted(g['expect']))} |")
    w("")
    w("## Every 5xx, by origin (access log of the api listener)")
    w("")
    if a5xx:
        w("| status | response code details | flags | protocol | path | origin | count |")
        w("|---|---|---|---|---|---|---|")
        for (s, d, f, p, path, o), n in sorted(a5xx.items(), key=lambda kv: -kv[1]):
            w(f"| {s} | {d} | {f} | {p} | `{path}` | {o} | {n:,} |")
    else:
        w("No 5xx at all.")
    w("")
    w("## Security events")
    w("")
    w(f"Per worker thread (Envoy log thread id): written / suppressed by the budget "
      f"({budget} lines per second per worker; the suppressed count is logged as a "
      "`security_event_summary` line before the next event written, and the worker check after the "
      "load flushes the last one).")
    w("")
    w("| thread | events written | suppressed |")
    w("|---|---|---|")
    for tid in sorted(set(elog["events"]) | set(elog["suppressed"])):
        w(f"| {tid} | {elog['events'].get(tid, 0):,} | {elog['suppressed'].get(tid, 0):,} |")
    w("")
    w("Events written, by status and code:")
    w("")
    w("| status | code | events |")
    w("|---|---|---|")
    for (s, c), n in sorted(elog["events_by_code"].items(), key=lambda kv: (kv[0][0], -kv[1])):
        w(f"| {s} | {c} | {n:,} |")
    w("")
    if elog["errors"]:
        w("Envoy log lines at error or critical level:")
        w("")
        for text, n in sorted(elog["errors"].items(), key=lambda kv: -kv[1])[:10]:
            w(f"- {n} x `{text}`")
        w("")
    w("## The mix, request by request (each once, fresh connection, before and after the load)")
    w("")
    w("| request | kind | expected | start | end |")
    w("|---|---|---|---|---|")
    end_by_label = {e.label: (s, c) for e, s, c in v["h1_end"]}
    for e, s, c in v["h1_start"]:
        es, ec = end_by_label.get(e.label, (None, "-"))
        mark = lambda st: "" if st in e.expect else " **unexpected**"
        w(f"| {e.label} | {e.kind} | {'/'.join(map(str, sorted(e.expect)))} | {s} {c}{mark(s)} | "
          f"{es} {ec}{mark(es)} |")
    end2 = {(n, p): (s, ver) for n, p, _, s, ver in v["h2_end"]}
    for n, p, exp, s, ver in v["h2_start"]:
        es, ever = end2.get((n, p), (None, "?"))
        mark = lambda st, vv: "" if st in exp and vv == "2" else " **unexpected**"
        w(f"| HTTP/2 {n}: `{p}` | h2 | {'/'.join(map(str, sorted(exp)))} | {s} (h{ver}){mark(s, ver)} | "
          f"{es} (h{ever}){mark(es, ever)} |")
    w("")
    w("## Envoy RSS over the load (every 60 s)")
    w("")
    w("| s | " + " | ".join(str(t) for t, _ in v["samples"][::12]) + " |")
    w("|---|" + "---|" * len(v["samples"][::12]))
    w("| MiB | " + " | ".join(f"{(r or 0) / 1024:.1f}" for _, r in v["samples"][::12]) + " |")
    w("")
    return "\n".join(out)


if __name__ == "__main__":
    sys.exit(main())
