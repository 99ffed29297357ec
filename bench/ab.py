#!/usr/bin/env python3
"""A/B of the cache-hit path of several broker builds against the axum baseline (issue #15).

Each build runs bench/broker.yaml (env local, level warn) on its own loopback port; wrk -t1
drives GET /token/altinn on each in turn, then the baseline, ROUNDS times per connection count.
Besides req/s and p99 it prints the CPU time each server spent per request (user + system, and
user alone, from /proc/PID/stat around each run): on a noisy shared machine that is steadier
than req/s. Each ratio to the baseline is the ratio of the medians, followed by its spread: the
lowest and highest ratio of one round's run to the baseline's run of the same round (they ran
back to back). A difference between builds inside that spread is not one these runs can tell.
Build the variants first and copy their binaries aside (cargo build --release).

usage: bench/ab.py NAME=BINARY[@LEVEL] [NAME=BINARY[@LEVEL] ...]
env:   ROUNDS (3), SECS (5), CONNS ("16 64")
e.g.   bench/ab.py before=/tmp/broker-before after=target/release/maskinporten-broker
"""
import os, sys, subprocess, time, json, statistics, tempfile, urllib.request
HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
LUA = f"{HERE}/wrk-report.lua"
BASELINE = f"{ROOT}/target/release/examples/bench_baseline"
ROUNDS = int(os.environ.get("ROUNDS", 3)); SECS = int(os.environ.get("SECS", 5))
CONNS = [int(c) for c in os.environ.get("CONNS", "16 64").split()]
CFG = open(f"{HERE}/broker.yaml").read()
w = tempfile.mkdtemp()
procs = {}; targets = {}
port = 18190
for arg in sys.argv[1:]:
    name, binary = arg.split("=", 1)
    binary, _, level = binary.partition("@")
    text = CFG.replace("127.0.0.1:18080", f"127.0.0.1:{port}")
    if level: text = text.replace("level: warn", "level: " + level)
    cfg = f"{w}/{name}.yaml"; open(cfg, "w").write(text)
    procs[name] = subprocess.Popen([binary, "--config", cfg], stdout=open(f"{w}/{name}.log", "w"), stderr=subprocess.STDOUT)
    targets[name] = f"http://127.0.0.1:{port}/token/altinn"; port += 1
time.sleep(2)
size = 0
for name, url in targets.items():
    body = urllib.request.urlopen(url).read(); size = len(body)
procs["baseline"] = subprocess.Popen([BASELINE, str(size), f"127.0.0.1:{port}"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
targets["baseline"] = f"http://127.0.0.1:{port}/token/altinn"
time.sleep(1)
def cpu(pid):
    f = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(f[11]) + int(f[12]), int(f[11]))
res = {}
try:
    for r in range(ROUNDS):
        for c in CONNS:
            for name, url in targets.items():
                pid = procs[name].pid; before = cpu(pid)
                out = subprocess.run(["wrk", "-t1", f"-c{c}", f"-d{SECS}s", "-s", LUA, url], capture_output=True, text=True).stdout
                after = cpu(pid); used = after[0] - before[0]; user = after[1] - before[1]
                j = json.loads([l for l in out.splitlines() if l.startswith("{")][-1])
                us = used / 100 * 1e6 / max(j["requests"], 1); uus = user / 100 * 1e6 / max(j["requests"], 1)
                res.setdefault((c, name), []).append((j["requestsPerSec"], j["p99"] * 1e3, us, j["non2xx"] + j["errors"], uus))
                print(f"r{r} c{c} {name:10s} {j['requestsPerSec']:9.0f} req/s p99 {j['p99']*1e3:6.2f} ms cpu {us:5.1f} us/req user {uus:4.1f} err {j['non2xx']+j['errors']}", flush=True)
finally:
    for p in procs.values(): p.kill()
print()

def spread(xs, bs, i):
    """min-max over the rounds of this build's value i over the baseline's in the same round."""
    rs = [x[i] / b[i] for x, b in zip(xs, bs) if b[i]]
    return f"{min(rs):4.2f}-{max(rs):4.2f}" if rs else "n/a"

for c in CONNS:
    base = res[(c, "baseline")]
    b = statistics.median(x[0] for x in base); bp = statistics.median(x[1] for x in base)
    bus = statistics.median(x[2] for x in base)
    for name in targets:
        xs = res[(c, name)]
        rps = statistics.median(x[0] for x in xs); p99 = statistics.median(x[1] for x in xs); us = statistics.median(x[2] for x in xs); uus = statistics.median(x[4] for x in xs)
        print(f"c={c:3d} {name:10s} {rps:8.0f} req/s {rps/b:5.2f}x ({spread(xs, base, 0)})  "
              f"p99 {p99:5.2f} ms ({p99/bp:4.2f}x, {spread(xs, base, 1)})  "
              f"cpu {us:5.1f} us/req ({us/bus:4.2f}x, {spread(xs, base, 2)}) user {uus:4.2f}")
