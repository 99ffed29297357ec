"""Open N half-requests against a running broker, ask it with curl meanwhile, and measure when
the broker closes each stalled connection (README "Connections"). Every wait has a deadline.

    python3 bench/stalled_connections.py PORT N [DEADLINE_SECONDS] [BROKER_PID]

With BROKER_PID it also shows the broker's RSS and open file descriptors (Linux /proc).
Example, with the release build in env local:
    target/release/maskinporten-broker --config broker.yaml &   # listens on 127.0.0.1:8080
    python3 bench/stalled_connections.py 8080 1000 30 $!
Under a lower open-files limit: start the broker from `bash -c 'ulimit -n 256; exec ...'`.
"""
import selectors, socket, subprocess, sys, time

host, port, n = "127.0.0.1", int(sys.argv[1]), int(sys.argv[2])
deadline_s = float(sys.argv[3]) if len(sys.argv) > 3 else 30
pid = sys.argv[4] if len(sys.argv) > 4 else None

def rss():
    if not pid: return None
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS"): return line.split()[1] + " kB"

def fds():
    if not pid: return None
    return len(subprocess.run(["ls", f"/proc/{pid}/fd"], capture_output=True, text=True).stdout.split())

def curl(path):
    r = subprocess.run(["curl", "-s", "-o", "/dev/null", "-m", "30", "-w", "%{http_code} %{time_total}", f"http://{host}:{port}{path}"], capture_output=True, text=True)
    return r.stdout

print("before: rss", rss(), "fds", fds())
print("curl /token/altinn (warm the cache):", curl("/token/altinn"))
sel = selectors.DefaultSelector()
opened = {}
t0 = time.time()
for i in range(n):
    s = socket.create_connection((host, port))
    s.sendall(b"GET /token/altinn HTTP/1.1\r\nHost: broker\r\nX-Half: ")
    s.setblocking(False)
    sel.register(s, selectors.EVENT_READ, i)
    opened[i] = time.time()
print(f"opened {n} half-requests in {time.time()-t0:.2f} s")
time.sleep(0.5)
print("with them open: rss", rss(), "fds", fds())
for path in ["/healthz", "/token/altinn", "/token/admin", "/readyz"]:
    print(f"curl {path} while {n} stalled are open: code time_s =", curl(path))
closed = {}
end = time.time() + deadline_s
while len(closed) < n and time.time() < end:
    for key, _ in sel.select(timeout=1):
        s = key.fileobj
        try:
            data = s.recv(4096)
        except (ConnectionResetError, BlockingIOError):
            data = b""
        if not data:
            closed[key.data] = time.time() - opened[key.data]
            sel.unregister(s)
            s.close()
ages = sorted(closed.values())
print(f"closed by the broker: {len(closed)} of {n} within {deadline_s} s")
if ages:
    print(f"time from half-request to close: min {ages[0]:.2f} s, median {ages[len(ages)//2]:.2f} s, max {ages[-1]:.2f} s")
print("after: rss", rss(), "fds", fds())
print("curl /healthz after:", curl("/healthz"))
