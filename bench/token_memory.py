"""Memory per cached token: the broker's RSS after W warm-up tokens and again after N more, each
a system-user token of the `altinn` profile for another organisation, asked once as JSON
(README "How tokens are cached"). Bounded: N requests, each retried at most 50 times on 429.

    python3 bench/token_memory.py PORT BROKER_PID WARM N

Run the simulator as a process of its own, so its memory is not counted, and point the broker
at it (env test, endpoints on the simulator, cache.max_fetches_per_second raised so the run
takes seconds):
    maskinporten-broker simulate --config sim.yaml --listen 127.0.0.1:9190 &
    maskinporten-broker --config broker.yaml &          # listen: 127.0.0.1:9191
    python3 bench/token_memory.py 9191 $! 200 5000
"""
import http.client, sys, time

port, pid, warm, n = (int(a) for a in sys.argv[1:5])
WEIGHTS = [3, 2, 7, 6, 5, 4, 3, 2]

def rss_kib():
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS"):
            return int(line.split()[1])

def orgs():
    prefix = 90000000
    while True:
        digits = str(prefix)
        check = 11 - sum(int(c) * w for c, w in zip(digits, WEIGHTS)) % 11
        if check != 10:
            yield digits + str(0 if check == 11 else check)
        prefix += 1

conn = http.client.HTTPConnection("127.0.0.1", port)

def ask(org):
    for _ in range(50):
        conn.request("GET", f"/token/altinn?org={org}")
        r = conn.getresponse()
        body = r.read()
        if r.status == 200:
            return len(body)
        if r.status != 429:
            raise SystemExit(f"{r.status} {body[:200]!r}")
        time.sleep(0.05)
    raise SystemExit("still 429 after 50 tries")

numbers = orgs()
for _ in range(warm):
    ask(next(numbers))
time.sleep(1)
before = rss_kib()
size = 0
for _ in range(n):
    size = ask(next(numbers))
time.sleep(1)
after = rss_kib()
print(f"RSS after {warm} warm-up tokens: {before} KiB; after {n} more: {after} KiB; "
      f"{(after - before) * 1024 / n:.0f} bytes per token (answer {size} bytes)")
