#!/usr/bin/env python3
"""A/B for issue 13, in one run on one machine: a unix vs a TCP upstream (M1: one connection's
bulk throughput, up and down) and --proxy-protocol v2 vs none (M4: new TLS 1.3 connections a
second, 4 client threads). Rounds alternate the order of A and B. Needs `cargo build --release`.

    python3 bench/upstreams_ab.py [SECS_PER_RUN] [ROUNDS]   # prints one JSON object
"""
import json, os, signal, socket, subprocess, sys, tempfile, time
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TLSRELAY = f"{ROOT}/target/release/tlsrelay"
LOAD = f"{ROOT}/target/release/tlsrelay-load"
D = tempfile.mkdtemp(prefix="tlsrelay-upstreams-ab-")
procs = []

def free_port():
    s = socket.socket(); s.bind(("127.0.0.1", 0)); p = s.getsockname()[1]; s.close(); return p

def spawn(cmd, log):
    p = subprocess.Popen(cmd, stdout=open(log, "w"), stderr=subprocess.STDOUT, start_new_session=True)
    procs.append(p); return p

def wait_line(log, needle):
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        text = open(log).read()
        for line in text.splitlines():
            if needle in line:
                return line
        time.sleep(0.05)
    raise SystemExit(f"no {needle} in {log}")

def backend(name, extra):
    log = f"{D}/{name}.log"
    spawn([LOAD, "backend", "--max-secs", "900"] + extra, log)
    return wait_line(log, "listening on").split("listening on ")[1].strip()

def relay(name, upstream, extra=()):
    port = free_port()
    log = f"{D}/{name}.log"
    p = spawn([TLSRELAY, "serve", "--listen", f"127.0.0.1:{port}", "--cert", f"{D}/server.crt", "--key", f"{D}/server.key",
               "--upstream", upstream, "--tls-min", "1.3", "--max-clients", "10000", *extra], log)
    wait_line(log, "listening on")
    return port, p.pid

def client(port, pid, args, secs):
    cmd = [LOAD] + args + ["--secs", str(secs), "--connect", f"127.0.0.1:{port}", "--ca", f"{D}/ca.crt", "--cpu-pid", str(pid)]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=secs + 60)
    return json.loads(r.stdout.strip().splitlines()[-1])

try:
    subprocess.run([TLSRELAY, "gen-cert", "--out", D], check=True, capture_output=True)
    tcp_b = backend("b_tcp", ["--listen", "127.0.0.1:0"])
    backend("b_unix", ["--unix", f"{D}/b.sock"])
    pp_b = backend("b_pp", ["--listen", "127.0.0.1:0", "--proxy-header"])
    r_tcp = relay("r_tcp", tcp_b)
    r_unix = relay("r_unix", f"unix:{D}/b.sock")
    r_pp = relay("r_pp", pp_b, ["--proxy-protocol", "v2"])
    secs = float(sys.argv[1]) if len(sys.argv) > 1 else 4
    rounds = int(sys.argv[2]) if len(sys.argv) > 2 else 3
    res = {}
    for rnd in range(rounds):
        for d in ("up", "down"):
            for name, (port, pid) in (("tcp", r_tcp), ("unix", r_unix)) if rnd % 2 == 0 else (("unix", r_unix), ("tcp", r_tcp)):
                out = client(port, pid, ["bulk", "--dir", d, "--conns", "1"], secs)
                res.setdefault(f"m1_{d}_{name}", []).append(out)
        for name, (port, pid) in (("none", r_tcp), ("v2", r_pp)) if rnd % 2 == 0 else (("v2", r_pp), ("none", r_tcp)):
            out = client(port, pid, ["handshakes", "--threads", "4"], secs)
            res.setdefault(f"m4_{name}", []).append(out)
    print(json.dumps(res))
finally:
    for p in procs:
        try: os.killpg(p.pid, signal.SIGKILL)
        except ProcessLookupError: pass
