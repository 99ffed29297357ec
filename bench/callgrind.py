#!/usr/bin/env python3
"""Instructions per request of broker builds under callgrind (issue #23): a measure that does not
move with the machine's load, for comparing builds while other work shares the cores.

Each build runs bench/broker.yaml (env local, level warn) under `valgrind --tool=callgrind` with
instrumentation off; after WARM requests it is switched on (`callgrind_control -i on`), REQUESTS
requests are sent over CONNS keep-alive connections (one client thread each, each waiting for its
answer before the next request), instrumentation is switched off again and the process ends. The
instruction count (Ir) of that window divided by REQUESTS is the figure; the top functions by
inclusive and self cost are printed with `callgrind_annotate`.

usage: bench/callgrind.py [--proxy | --identity | --texas] NAME=BINARY [NAME=BINARY ...]
  NAME=baseline  the bare axum server (target/release/examples/bench_baseline) instead
  --proxy        GET /proxy/bench/token/altinn, the egress proxy to a bench_baseline upstream
                 (1 KiB body, run natively on 127.0.0.1:18081); default GET /token/altinn
  --identity     GET /token/admin twice per build: with a service-account token (RS256, an
                 issuer whose JWKS is served on 127.0.0.1:18289; key and token made with openssl)
                 as NAME/token, and with an API key (X-Api-Key) as NAME/key
  --texas        POST /api/v1/token with texas's JSON body (on_demand.scopes added to the
                 config), the request of bench/run.sh's texas step
env:   REQUESTS (2000), CONNS (16), WARM (200), TOP (25 functions listed; 0: none)
e.g.   bench/callgrind.py before=/tmp/broker-before after=target/release/maskinporten-broker
"""
import os, re, socket, subprocess, sys, tempfile, threading, time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
BASELINE = f"{ROOT}/target/release/examples/bench_baseline"
REQUESTS = int(os.environ.get("REQUESTS", 2000))
CONNS = int(os.environ.get("CONNS", 16))
WARM = int(os.environ.get("WARM", 200))
TOP = int(os.environ.get("TOP", 25))
CFG = open(f"{HERE}/broker.yaml").read()


# The texas step's request body and the config it needs.
TEXAS_BODY = '{"identity_provider":"maskinporten","target":"altinn:instances.read"}'
TEXAS_CONFIG = 'on_demand:\n  scopes: ["altinn:*"]\n'


def get(sock, path, host, header=""):
    """One GET on a keep-alive socket (with `header`, a "Name: value\r\n" line or ""); returns
    the status code. Reads exactly one answer. A path "POST /x" is texas's POST instead."""
    if path.startswith("POST "):
        sock.sendall((f"{path} HTTP/1.1\r\nHost: {host}\r\n{header}"
                      f"Content-Type: application/json\r\nContent-Length: {len(TEXAS_BODY)}\r\n"
                      f"\r\n{TEXAS_BODY}").encode())
    else:
        sock.sendall(f"GET {path} HTTP/1.1\r\nHost: {host}\r\n{header}\r\n".encode())
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("closed before the answer's head")
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    m = re.search(rb"(?im)^content-length:\s*(\d+)", head)
    if m:
        need = int(m.group(1))
        while len(body) < need:
            chunk = sock.recv(65536)
            if not chunk:
                raise ConnectionError("closed in the body")
            body += chunk
    elif re.search(rb"(?im)^transfer-encoding:\s*chunked", head):
        while not body.endswith(b"0\r\n\r\n"):
            chunk = sock.recv(65536)
            if not chunk:
                raise ConnectionError("closed in the chunked body")
            body += chunk
    return status


def drive(port, path, total, conns, header=""):
    """total GETs over conns connections; returns the number of non-200 answers."""
    bad = [0]
    per = [total // conns + (1 if i < total % conns else 0) for i in range(conns)]

    def client(n):
        with socket.create_connection(("127.0.0.1", port)) as s:
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            for _ in range(n):
                if get(s, path, f"127.0.0.1:{port}", header) != 200:
                    bad[0] += 1

    threads = [threading.Thread(target=client, args=(n,)) for n in per if n]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return bad[0]


def wait_up(port, proc, seconds=300):
    for _ in range(seconds * 5):
        if proc.poll() is not None:
            sys.exit(f"the server on port {port} exited during start-up")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
                if get(s, "/healthz", "x") == 200:
                    return
        except OSError:
            pass
        time.sleep(0.2)
    sys.exit(f"port {port} did not answer /healthz")


JWKS_PORT = 18289
API_KEY = "callgrind-api-key"


def identity_setup(work):
    """An RSA key, its JWKS served on JWKS_PORT (a thread of this process), a service-account
    token it signs; returns (the config to append, the token, the JWKS server)."""
    import base64, hashlib, http.server, json, functools
    subprocess.run(["openssl", "genrsa", "-out", f"{work}/key.pem", "2048"], check=True,
                   capture_output=True)
    b64 = lambda b: base64.urlsafe_b64encode(b).rstrip(b"=").decode()
    modulus = subprocess.run(["openssl", "rsa", "-in", f"{work}/key.pem", "-noout", "-modulus"],
                             check=True, capture_output=True, text=True).stdout.strip()
    n = bytes.fromhex(modulus.split("=", 1)[1])
    os.makedirs(f"{work}/jwks")
    jwk = {"kty": "RSA", "kid": "cg", "alg": "RS256", "n": b64(n), "e": b64(b"\x01\x00\x01")}
    json.dump({"keys": [jwk]}, open(f"{work}/jwks/jwks.json", "w"))
    iss = f"http://127.0.0.1:{JWKS_PORT}"
    now = int(time.time())
    claims = {"iss": iss, "aud": ["maskinporten-broker"], "sub": "system:serviceaccount:cg:caller",
              "iat": now, "nbf": now, "exp": now + 3600,
              "kubernetes.io": {"namespace": "cg", "serviceaccount": {"name": "caller"}}}
    signing = (b64(json.dumps({"alg": "RS256", "typ": "JWT", "kid": "cg"}).encode()) + "."
               + b64(json.dumps(claims).encode()))
    signature = subprocess.run(["openssl", "dgst", "-sha256", "-sign", f"{work}/key.pem"],
                               input=signing.encode(), check=True, capture_output=True).stdout
    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    handler = functools.partial(Quiet, directory=f"{work}/jwks")
    server = http.server.ThreadingHTTPServer(("127.0.0.1", JWKS_PORT), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    config = (f"identity:\n  issuers:\n    cg:\n      issuer: {iss}\n"
              f"      jwks_uri: {iss}/jwks.json\n      audience: maskinporten-broker\n"
              "clients:\n  - name: workload\n"
              "    identity: {issuer: cg, subject: \"system:serviceaccount:cg:caller\"}\n"
              "    profiles: [admin]\n  - name: keyed\n"
              f"    key_sha256: {hashlib.sha256(API_KEY.encode()).hexdigest()}\n"
              "    profiles: [admin]\n")
    return config, signing + "." + b64(signature), server


def main():
    args = sys.argv[1:]
    proxy = "--proxy" in args
    identity = "--identity" in args
    texas = "--texas" in args
    args = [a for a in args if a not in ("--proxy", "--identity", "--texas")]
    if not args or proxy + identity + texas > 1:
        sys.exit(__doc__)
    path = "/proxy/bench/token/altinn" if proxy else "/token/altinn"
    work = tempfile.mkdtemp(prefix="broker-callgrind.")
    upstream = jwks = None
    cfg_text = CFG
    if texas:
        path = "POST /api/v1/token"
        cfg_text = CFG + TEXAS_CONFIG
    runs = [(arg.split("=", 1)[0], arg.split("=", 1)[1], "") for arg in args]
    if identity:
        path = "/token/admin"
        extra, token, jwks = identity_setup(work)
        cfg_text = CFG + extra
        runs = [(f"{name}/{kind}", binary, header) for name, binary, _ in runs
                for kind, header in (("token", f"Authorization: Bearer {token}\r\n"),
                                     ("key", f"X-Api-Key: {API_KEY}\r\n"))]
    if proxy:
        upstream = subprocess.Popen([BASELINE, "1024", "127.0.0.1:18081"],
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    results = []
    port = 18290
    try:
        if upstream:
            wait_up(18081, upstream)
        for name, binary, header in runs:
            port += 1
            out = f"{work}/{name.replace('/', '-')}.callgrind"
            if binary == "baseline":
                if proxy or texas:
                    sys.exit("baseline has no /proxy or texas route")
                cmd = [BASELINE, "1190", f"127.0.0.1:{port}"]
            else:
                cfg = f"{work}/{name.replace('/', '-')}.yaml"
                open(cfg, "w").write(cfg_text.replace("127.0.0.1:18080", f"127.0.0.1:{port}"))
                cmd = [binary, "--config", cfg]
            proc = subprocess.Popen(
                ["valgrind", "--tool=callgrind", "--instr-atstart=no",
                 f"--callgrind-out-file={out}", *cmd],
                stdout=open(f"{work}/{name.replace('/', '-')}.log", "w"), stderr=subprocess.STDOUT)
            try:
                wait_up(port, proc)
                bad = drive(port, path, WARM, CONNS, header)
                subprocess.run(["callgrind_control", "-i", "on", str(proc.pid)],
                               check=True, capture_output=True)
                started = time.time()
                bad += drive(port, path, REQUESTS, CONNS, header)
                took = time.time() - started
                subprocess.run(["callgrind_control", "-i", "off", str(proc.pid)],
                               check=True, capture_output=True)
            finally:
                proc.terminate()
                proc.wait(timeout=120)
            total = 0
            for line in open(out):
                if line.startswith("summary:") or line.startswith("totals:"):
                    total = int(line.split()[1])
            results.append((name, total / REQUESTS, bad, took, out))
            print(f"{name:12s} {total / REQUESTS:10.0f} Ir/request  ({REQUESTS} requests, "
                  f"{CONNS} conns, {bad} non-200, {took:.1f} s under callgrind)", flush=True)
            if TOP:
                annotated = subprocess.run(
                    ["callgrind_annotate", "--inclusive=yes", f"--threshold=99", out],
                    capture_output=True, text=True).stdout
                lines = [l for l in annotated.splitlines() if re.match(r"^\s*[\d,]+ \(", l)]
                print("\n".join(lines[:TOP]))
                print()
    finally:
        if upstream:
            upstream.terminate()
        if jwks:
            jwks.shutdown()
    print(f"callgrind files in {work}")
    for name, ir, bad, took, out in results:
        print(f"{name:12s} {ir:10.0f} Ir/request")
    if identity:
        by = {name: ir for name, ir, *_ in results}
        for name, _, _ in runs[::2]:
            build = name.rsplit("/", 1)[0]
            print(f"{build}: token / key = {by[build + '/token'] / by[build + '/key']:.2f} "
                  "(instructions per request; the wall-clock ratio is bench/run.sh step 8's)")


if __name__ == "__main__":
    main()
