#!/usr/bin/env python3
"""`make bench` / `make bench-full`: tlsrelay against stunnel, haproxy, nginx (stream) and
socat in one run, repeated and interleaved, on 127.0.0.1 only (issue 7, BENCH.md).

Every relay gets the same ECDSA P-256 certificate (`tlsrelay gen-cert`), TLS 1.3 only; the
client (`tlsrelay-load`) offers TLS_AES_256_GCM_SHA384 only. Each round starts every relay
afresh in a rotated order and runs M3, M1, M2, M4 on it; M5/M6 use a fresh relay per run.
Results: markdown tables on stdout, plus target/bench/latest-{quick,full}.{md,json}.
"""

import argparse
import json
import os
import platform
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TLSRELAY = os.path.join(ROOT, "target/release/tlsrelay")
LOAD = os.path.join(ROOT, "target/release/tlsrelay-load")
OUT_DIR = os.path.join(ROOT, "target/bench")
HOST = "127.0.0.1"
NGINX_STREAM_SO = "/usr/lib/nginx/modules/ngx_stream_module.so"

MODES = {
    # secs: length of each measure window; idle: M5/M6 sizes; stop_wait: how long a relay
    # may take to exit on SIGTERM before it is killed.
    "quick": dict(rounds=3, secs=0.5, idle=[1000], idle_rounds=1, idle_secs=1.0, speed_secs=1, stop_wait=4.0),
    "full": dict(rounds=5, secs=2.0, idle=[1000, 5000], idle_rounds=3, idle_secs=3.0, speed_secs=3, stop_wait=10.0),
}

ANCHORS = ["stunnel", "haproxy", "nginx", "socat"]
CEILING = "no relay"


def log(msg):
    print(msg, file=sys.stderr, flush=True)


# ---------------------------------------------------------------- installing the anchors

def nginx_stream_state():
    """'static', 'dynamic' (module file present), or None."""
    if not shutil.which("nginx"):
        return None
    v = subprocess.run(["nginx", "-V"], capture_output=True, text=True).stderr
    if "--with-stream " in v + " " and "--with-stream=dynamic" not in v:
        return "static"
    return "dynamic" if os.path.exists(NGINX_STREAM_SO) else None


def missing_anchors():
    missing = [n for n, b in [("stunnel", "stunnel4"), ("haproxy", "haproxy"), ("socat", "socat")] if not shutil.which(b)]
    if nginx_stream_state() is None:
        missing.append("nginx")
    return missing


def ensure_anchors():
    missing = missing_anchors()
    # perf counts the relays' context switches (ContextSwitches); the columns stay empty without it.
    tools = [] if shutil.which("perf") else ["linux-perf"]
    if not missing and not tools:
        return []
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        log(f"anchors missing and cannot install (need root and apt-get): {missing + tools}")
        return missing
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    log(f"installing from Debian: {missing + tools}")
    subprocess.run(["apt-get", "update", "-qq"], env=env, check=False)
    subprocess.run(["apt-get", "install", "-y", "-qq", "stunnel4", "haproxy", "nginx-light", "socat"] + tools, env=env, check=False)
    if nginx_stream_state() is None:
        # Debian 12's nginx-light is a transitional package without the stream module.
        log("nginx has no stream module: installing nginx + libnginx-mod-stream")
        subprocess.run(["apt-get", "install", "-y", "-qq", "nginx", "libnginx-mod-stream"], env=env, check=False)
    missing = missing_anchors()
    if missing:
        log(f"still missing, skipped: {missing}")
    return missing


# ---------------------------------------------------------------- processes

def free_port():
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def wait_port(port, deadline):
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((HOST, port), timeout=0.2):
                return True
        except OSError:
            time.sleep(0.02)
    return False


def wait_log(path, needle, deadline):
    while time.monotonic() < deadline:
        try:
            with open(path, errors="replace") as f:
                for line in f:
                    if needle in line:
                        return line
        except FileNotFoundError:
            pass
        time.sleep(0.02)
    return None


def spawn(cmd, logpath, extra_env=None):
    with open(logpath, "ab") as out:
        return subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True, env=dict(os.environ, **(extra_env or {})))


def stop_then_kill(proc, wait=2.0):
    """SIGTERM, so a master reaps its workers (their CPU then counts as ours), then SIGKILL."""
    if proc is None:
        return
    try:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=wait)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        pass
    kill_group(proc)


def kill_group(proc):
    if proc is None:
        return
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    try:
        proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
        pass


def stat_fields(pid):
    """The fields of /proc/PID/stat after "(comm)" (state first), or None if it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            text = f.read()
    except OSError:
        return None
    return text[text.rfind(")") + 2:].split()


def proc_table():
    """{pid: (ppid, state)} for every process."""
    table = {}
    for name in os.listdir("/proc"):
        rest = stat_fields(name) if name.isdigit() else None
        if rest:
            table[int(name)] = (int(rest[1]), rest[0])
    return table


def tree(root):
    table = proc_table()
    pids, frontier = [root], [root]
    while frontier:
        parent = frontier.pop()
        kids = [p for p, (pp, _) in table.items() if pp == parent]
        pids += kids
        frontier += kids
    return [p for p in pids if p in table]


def tree_pss_kib(root):
    total = 0
    for pid in tree(root):
        try:
            with open(f"/proc/{pid}/smaps_rollup") as f:
                for line in f:
                    if line.startswith("Pss:"):
                        total += int(line.split()[1])
        except OSError:
            pass
    return total


def tree_threads(root):
    n = 0
    for pid in tree(root):
        try:
            n += len(os.listdir(f"/proc/{pid}/task"))
        except OSError:
            pass
    return n


def tree_cpu(root):
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0
    for pid in tree(root):
        rest = stat_fields(pid)
        if rest:
            total += sum(int(x) for x in rest[11:15])
    return total / ticks


def meminfo():
    out = {}
    with open("/proc/meminfo") as f:
        for line in f:
            k, v = line.split(":", 1)
            out[k] = int(v.split()[0])
    return out


def pin(root, cpus):
    """Sets the affinity of every thread of `root` and its descendants."""
    for pid in tree(root):
        try:
            for tid in os.listdir(f"/proc/{pid}/task"):
                try:
                    os.sched_setaffinity(int(tid), cpus)
                except OSError:
                    pass
        except OSError:
            pass


# ---------------------------------------------------------------- relays

class Env:
    def __init__(self, tmp):
        self.tmp = tmp
        self.certs = os.path.join(tmp, "certs")
        self.crt = os.path.join(self.certs, "server.crt")
        self.key = os.path.join(self.certs, "server.key")
        self.ca = os.path.join(self.certs, "ca.crt")
        self.pem = os.path.join(self.certs, "server.pem")
        self.seq = 0

    def dir_for(self, name):
        self.seq += 1
        d = os.path.join(self.tmp, f"{self.seq:03d}-{name.replace(' ', '-')}")
        os.makedirs(d)
        return d


def write(path, text):
    with open(path, "w") as f:
        f.write(text)
    return path


def start_tlsrelay(env, d, port, bport, extra_env=None, binary=None):
    cmd = [binary or TLSRELAY, "serve", "--listen", f"{HOST}:{port}", "--cert", env.crt, "--key", env.key,
           "--upstream", f"{HOST}:{bport}", "--tls-min", "1.3", "--max-clients", "10000"]
    proc = spawn(cmd, os.path.join(d, "relay.log"), extra_env=extra_env)
    ok = wait_log(os.path.join(d, "relay.log"), "listening on", time.monotonic() + 10)
    return proc, bool(ok)


def start_tlsrelay_glibc_tcache(env, d, port, bport):
    """tlsrelay unchanged, with glibc's default per-thread malloc cache (7 blocks a size)
    instead of the one block it sets for itself (src/serve/malloc.rs)."""
    return start_tlsrelay(env, d, port, bport, extra_env={"GLIBC_TUNABLES": "glibc.malloc.tcache_count=7"})


def start_stunnel(env, d, port, bport):
    conf = write(os.path.join(d, "stunnel.conf"), f"""foreground = yes
pid =
debug = notice
[relay]
accept = {HOST}:{port}
connect = {HOST}:{bport}
cert = {env.crt}
key = {env.key}
sslVersionMin = TLSv1.3
""")
    proc = spawn(["stunnel4", conf], os.path.join(d, "relay.log"))
    return proc, wait_port(port, time.monotonic() + 10)


def start_haproxy(env, d, port, bport):
    conf = write(os.path.join(d, "haproxy.cfg"), f"""global
    maxconn 9000
    ssl-default-bind-options ssl-min-ver TLSv1.3
defaults
    mode tcp
    timeout connect 10s
    timeout client 1h
    timeout server 1h
frontend fe
    bind {HOST}:{port} ssl crt {env.pem}
    default_backend be
backend be
    server s1 {HOST}:{bport}
""")
    proc = spawn(["haproxy", "-db", "-f", conf], os.path.join(d, "relay.log"))
    return proc, wait_port(port, time.monotonic() + 10)


def start_nginx(env, d, port, bport):
    load = f"load_module {NGINX_STREAM_SO};\n" if nginx_stream_state() == "dynamic" else ""
    conf = write(os.path.join(d, "nginx.conf"), f"""{load}daemon off;
master_process on;
worker_processes auto;
worker_rlimit_nofile 20000;
pid {d}/nginx.pid;
error_log {d}/error.log notice;
events {{ worker_connections 20000; }}
stream {{
    server {{
        listen {HOST}:{port} ssl;
        proxy_pass {HOST}:{bport};
        ssl_certificate {env.crt};
        ssl_certificate_key {env.key};
        ssl_protocols TLSv1.3;
    }}
}}
""")
    proc = spawn(["nginx", "-c", conf, "-p", d, "-e", os.path.join(d, "error.log")], os.path.join(d, "relay.log"))
    return proc, wait_port(port, time.monotonic() + 10)


def start_socat(env, d, port, bport):
    listen = (f"OPENSSL-LISTEN:{port},bind={HOST},reuseaddr,fork,backlog=4096,cert={env.crt},key={env.key},"
              f"verify=0,openssl-min-proto-version=TLS1.3")
    proc = spawn(["socat", listen, f"TCP:{HOST}:{bport}"], os.path.join(d, "relay.log"))
    return proc, wait_port(port, time.monotonic() + 10)


def start_tlsrelay_baseline(env, d, port, bport):
    """Another build of tlsrelay (`--baseline BIN`), for an A/B of two commits in one run."""
    return start_tlsrelay(env, d, port, bport, binary=BASELINE_BIN[0])


BASELINE = "tlsrelay baseline"
BASELINE_BIN = [None]
TUNED = "tlsrelay tcache=7"
STARTERS = {BASELINE: start_tlsrelay_baseline, "tlsrelay": start_tlsrelay, TUNED: start_tlsrelay_glibc_tcache, "stunnel": start_stunnel, "haproxy": start_haproxy,
            "nginx": start_nginx, "socat": start_socat}


class Instance:
    """One relay (or the ceiling's TLS backend alone) with its own backend."""

    def __init__(self, env, name):
        self.name, self.env = name, env
        self.dir = env.dir_for(name)
        self.backend = self.relay = None
        tls = ["--cert", env.crt, "--key", env.key] if name == CEILING else []
        blog = os.path.join(self.dir, "backend.log")
        self.backend = spawn([LOAD, "backend", "--listen", f"{HOST}:0", "--max-secs", "1800"] + tls, blog)
        line = wait_log(blog, "listening on", time.monotonic() + 10)
        if not line:
            raise RuntimeError(f"{name}: backend did not start")
        self.bport = int(line.strip().rsplit(":", 1)[1])
        if name == CEILING:
            self.port, self.cpu_pid = self.bport, None
            return
        self.port = free_port()
        self.relay, ok = STARTERS[name](env, self.dir, self.port, self.bport)
        if not ok:
            self.close()
            raise RuntimeError(f"{name} did not start; see {self.dir}/relay.log")
        self.cpu_pid = self.relay.pid

    def client(self, args, timeout, cpus=None, count_switches=False):
        cmd = [LOAD] + args + ["--connect", f"{HOST}:{self.port}", "--ca", self.env.ca]
        if self.cpu_pid:
            cmd += ["--cpu-pid", str(self.cpu_pid)]
        if cpus:
            cmd = ["taskset", "-c", cpus] + cmd
        switches = ContextSwitches(self.cpu_pid, os.path.join(self.dir, "perf-stat.csv")) if count_switches and self.cpu_pid else None
        try:
            r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            return {"failed": "client timed out"}
        finally:
            counted = switches.end() if switches else None
        try:
            res = json.loads(r.stdout.strip().splitlines()[-1])
        except (IndexError, ValueError):
            return {"failed": (r.stderr or r.stdout).strip()[-300:] or f"exit {r.returncode}"}
        if counted is not None and res.get("count"):
            res["cs_per_op"] = counted / res["count"]
        return res

    def pin(self, cpus):
        for p in (self.relay, self.backend):
            if p:
                pin(p.pid, cpus)

    def close(self):
        stop_then_kill(self.relay)
        kill_group(self.backend)


class ContextSwitches:
    """The relay's context switches (every process and thread of it, threads started meanwhile
    included) while a client runs, with `perf stat` when it is installed: how often the relay
    sleeps and wakes per connection or round trip, the cost a thread per connection pays
    (issue 16). It covers the client's whole run, its connection set-up included."""

    def __init__(self, root, out):
        """`out`: where perf writes its count (in the instance's directory, removed with it)."""
        self.proc, self.out = None, out
        if not shutil.which("perf"):
            return
        pids = ",".join(str(p) for p in tree(root))
        self.proc = subprocess.Popen(["perf", "stat", "-x,", "-e", "context-switches", "-p", pids, "-o", self.out],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def end(self):
        if self.proc is None:
            return None
        self.proc.send_signal(signal.SIGINT)
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return None
        with open(self.out) as f:
            for line in f:
                fields = line.split(",")
                if len(fields) > 2 and fields[2] == "context-switches" and fields[0].strip().isdigit():
                    return int(fields[0])
        return None


# ---------------------------------------------------------------- the measures

def throughput_round(inst, secs, results):
    name = inst.name
    timeout = secs + 60
    all_cpus = set(range(os.cpu_count() or 1))
    # M3 first, on a fresh instance, everything pinned to CPU 0.
    inst.pin({0})
    for conns in (1, 32):
        results[name][f"m3_{conns}"].append(inst.client(["rtt", "--conns", str(conns), "--secs", str(secs)], timeout, cpus="0",
                                                        count_switches=True))
    inst.pin(all_cpus)
    for conns, key in ((1, "m1"), (8, "m2_8"), (64, "m2_64")):
        for d in ("up", "down"):
            results[name][f"{key}_{d}"].append(inst.client(["bulk", "--dir", d, "--conns", str(conns), "--secs", str(secs)], timeout))
    for mode, extra in (("full", []), ("resumed", ["--resume"])):
        results[name][f"m4_{mode}"].append(inst.client(["handshakes", "--threads", "4", "--secs", str(secs)] + extra, timeout,
                                                       count_switches=True))


def idle_run(env, name, n, cfg):
    """M5 and M6 on a fresh relay: memory of n idle clients, then SIGTERM."""
    inst = Instance(env, name)
    res = {"n": n}
    idle = None
    try:
        inst.client(["handshakes", "--threads", "2", "--secs", "0.2"], 30)  # warm-up
        time.sleep(0.3)
        pss0, mem0, thr0 = tree_pss_kib(inst.relay.pid), meminfo(), tree_threads(inst.relay.pid)
        cmd = [LOAD, "idle", "--connect", f"{HOST}:{inst.port}", "--ca", env.ca, "--conns", str(n), "--max-secs", "600"]
        idle = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                text=True, start_new_session=True)
        line = idle.stdout.readline()
        if not line.startswith("ready "):
            res["failed"] = "idle client: " + line.strip()
            return res
        ready = json.loads(line[6:])
        res.update(established=ready["established"], failed_conns=ready["failed"], setup_s=ready["secs"],
                   first_error=ready["first_error"])
        time.sleep(0.5)
        pss1, mem1, thr1 = tree_pss_kib(inst.relay.pid), meminfo(), tree_threads(inst.relay.pid)
        est = max(ready["established"], 1)
        res["pss_kib"] = (pss1 - pss0) / est
        res["kstack_kib"] = (mem1["KernelStack"] - mem0["KernelStack"]) / est
        res["slab_kib"] = (mem1["Slab"] - mem0["Slab"]) / est
        res["threads"] = thr1 - thr0
        # x86-64 kernel stacks are 16 KiB per thread: the part of KernelStack that is the relay's.
        res["relay_kstack_kib"] = (thr1 - thr0) * 16 / est
        c0 = tree_cpu(inst.relay.pid)
        time.sleep(cfg["idle_secs"])
        res["idle_cpu_ms_per_s"] = (tree_cpu(inst.relay.pid) - c0) * 1000 / cfg["idle_secs"]

        # M6: SIGTERM, then how long until every relay process is gone, and what clients saw.
        pids = tree(inst.relay.pid)
        idle.stdin.write("watch\n")
        idle.stdin.flush()
        t0 = time.monotonic()
        os.kill(inst.relay.pid, signal.SIGTERM)
        exit_s = None
        while time.monotonic() - t0 < cfg["stop_wait"]:
            inst.relay.poll()
            table = proc_table()
            if all(p not in table or table[p][1] == "Z" for p in pids):
                exit_s = time.monotonic() - t0
                break
            time.sleep(0.005)
        res["exit_s"] = exit_s
        time.sleep(0.3)
        idle.stdin.write("report\n")
        idle.stdin.flush()
        report = json.loads(idle.stdout.readline())
        res.update(report)
    except Exception as e:  # keep the bench going; the row says what failed
        res["failed"] = f"{type(e).__name__}: {e}"
    finally:
        if idle:
            kill_group(idle)
        inst.close()
    return res


# ---------------------------------------------------------------- context

def first_line(cmd):
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return "n/a"
    text = (r.stdout + r.stderr).strip().splitlines()
    return text[0].strip() if text else "n/a"


def matching_line(cmd, needle):
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=20)
    return next((l.strip() for l in (r.stdout + r.stderr).splitlines() if needle in l), "n/a")


def cpu_pressure():
    try:
        with open("/proc/pressure/cpu") as f:
            return float(f.readline().split()[1].split("=")[1])
    except (OSError, IndexError, ValueError):
        return None


def cpu_busy_s():
    """Busy CPU seconds of the whole machine (all cores) since boot."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:9]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = v
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def own_cpu_s():
    a, b = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return a.ru_utime + a.ru_stime + b.ru_utime + b.ru_stime


def load_text():
    """Load average and CPU pressure (share of time some task waited for a CPU, last 10 s)."""
    with open("/proc/loadavg") as f:
        text = " ".join(f.read().split()[:3])
    try:
        with open("/proc/pressure/cpu") as f:
            some = f.readline().split()[1].split("=")[1]
        text += f" (CPU pressure {some}%)"
    except (OSError, IndexError):
        pass
    return text


def context(cfg):
    cpu = "unknown"
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    speed = subprocess.run(["openssl", "speed", "-evp", "aes-256-gcm", "-bytes", "16384", "-seconds", str(cfg["speed_secs"])],
                           capture_output=True, text=True).stdout
    gcm = None
    for line in speed.splitlines():
        if line.upper().startswith("AES-256-GCM"):
            gcm = float(line.split()[-1].rstrip("k")) * 1000 / 1e6  # MB/s
    load = load_text()
    return {
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "cpu": cpu, "cores": os.cpu_count(), "kernel": platform.release(),
        "mem_gib": round(meminfo()["MemTotal"] / 1024 / 1024, 1),
        "nofile": resource.getrlimit(resource.RLIMIT_NOFILE)[0],
        "load_start": load,
        "openssl": first_line(["openssl", "version"]),
        "aes256gcm_16k_mbps_1core": gcm,
        "versions": {
            "tlsrelay": first_line([TLSRELAY, "--version"]),
            "stunnel": matching_line(["stunnel4", "-version"], "stunnel ") if shutil.which("stunnel4") else "missing",
            "haproxy": first_line(["haproxy", "-v"]) if shutil.which("haproxy") else "missing",
            "nginx": first_line(["nginx", "-v"]) if shutil.which("nginx") else "missing",
            "socat": (subprocess.run(["socat", "-V"], capture_output=True, text=True).stdout.splitlines() or ["", "n/a"])[1].strip()
            if shutil.which("socat") else "missing",
        },
    }


# ---------------------------------------------------------------- tables

def med(xs):
    return statistics.median(xs) if xs else None


def fmt(x, nd=0):
    if x is None:
        return "—"
    return f"{x:,.{nd}f}"


# Below this much relay CPU in a window the figure is not a measurement.
MIN_CPU_S = 0.02
# socat forks a process per connection; with 32 or 64 of them busy, their /proc CPU times read
# far too low on this kernel (0–0.14 s where one process would show ~0.5 s), so not shown.
CPU_UNRELIABLE = {("socat", "m3_32"), ("socat", "m2_64_up"), ("socat", "m2_64_down")}


def values(runs, key):
    out = []
    for r in runs:
        if not isinstance(r, dict) or r.get(key) is None or r.get("failed"):
            continue
        if key.startswith("cpu_") and (r.get("relay_cpu_s") or 0) < MIN_CPU_S:
            continue
        out.append(r[key])
    return out


def ratio_text(x, best):
    if x is None or not best:
        return "—"
    return f"{x / best:.2f}×"


def table(title, note, header, rows):
    out = [f"### {title}", ""]
    if note:
        out += [note, ""]
    out.append("| " + " | ".join(header) + " |")
    out.append("|" + "|".join("---" if i == 0 else "---:" for i in range(len(header))) + "|")
    out += ["| " + " | ".join(r) + " |" for r in rows]
    return out + [""]


def metric_table(results, targets, measures, key, higher_better, unit, cpu_key, cpu_unit, cpu_nd, nd=0, switches=None):
    """Rows: target × measure; min/median/max of `key`; ratio of medians to the best anchor;
    with `switches` (the unit's name), the relay's context switches per unit too."""
    rows = []
    for mkey, mlabel in measures:
        meds = {t: med(values(results[t][mkey], key)) for t in targets}
        cpus = {t: None if (t, mkey) in CPU_UNRELIABLE else med(values(results[t][mkey], cpu_key)) for t in targets}
        anchor_meds = [meds[t] for t in ANCHORS if t in meds and meds[t] is not None]
        best = (max if higher_better else min)(anchor_meds) if anchor_meds else None
        best_name = next((t for t in ANCHORS if t in meds and meds[t] == best), None)
        anchor_cpus = [cpus[t] for t in ANCHORS if t in cpus and cpus[t] is not None]
        best_cpu = min(anchor_cpus) if anchor_cpus else None
        for t in targets:
            vs = values(results[t][mkey], key)
            fails = [r.get("failed") or r.get("first_error") for r in results[t][mkey]
                     if isinstance(r, dict) and (r.get("failed") or r.get("errors"))]
            mark = " ★" if t == best_name else ""
            row = [mlabel, t + mark, fmt(min(vs) if vs else None, nd), fmt(meds[t], nd), fmt(max(vs) if vs else None, nd),
                   ratio_text(meds[t], best), fmt(cpus[t], cpu_nd), ratio_text(cpus[t], best_cpu)]
            if switches:
                row.append(fmt(med(values(results[t][mkey], "cs_per_op")), 2))
            rows.append(row + [f"{len(vs)}" + (f" ({len(fails)} failed)" if fails else "")])
    header = ["measure", "target", f"min {unit}", f"median {unit}", f"max {unit}", "× best anchor",
              f"relay CPU {cpu_unit}", "CPU × best anchor"] + ([f"relay context switches/{switches}"] if switches else []) + ["runs"]
    return header, rows


def idle_table(idle_results, sizes):
    rows = []
    for n in sizes:
        meds = {}
        for t, runs in idle_results.items():
            rs = [r for r in runs if r["n"] == n]
            meds[t] = med(values(rs, "pss_kib"))
        anchor = [meds[t] for t in ANCHORS if meds.get(t) is not None]
        best = min(anchor) if anchor else None
        for t, runs in idle_results.items():
            rs = [r for r in runs if r["n"] == n]
            pss = values(rs, "pss_kib")
            fails = [r.get("failed") for r in rs if r.get("failed")]

            def m(key, nd=1):
                return fmt(med(values(rs, key)), nd)

            exit_vals = [r.get("exit_s") for r in rs if not r.get("failed")]
            exit_txt = fmt(med([e for e in exit_vals if e is not None]), 2) if any(e is not None for e in exit_vals) else "—"
            if any(e is None for e in exit_vals):
                exit_txt += f" ({sum(e is None for e in exit_vals)}× not exited)"
            rows.append([f"{n:,}", t, m("established", 0),
                         fmt(min(pss) if pss else None, 1) + " / " + fmt(med(pss), 1) + " / " + fmt(max(pss) if pss else None, 1),
                         ratio_text(med(pss), best), m("relay_kstack_kib"), m("kstack_kib"), m("slab_kib"), m("threads", 0), m("idle_cpu_ms_per_s", 2),
                         exit_txt, m("close_notify", 0), m("eof", 0), m("reset", 0), m("open", 0),
                         m("last_close_notify_s", 2) + (f" ({fails[0][:60]})" if fails else "")])
    header = ["idle clients", "target", "established", "PSS KiB/conn min / med / max", "× best anchor",
              "relay kernel stacks KiB/conn", "KernelStack KiB/conn (system)", "Slab KiB/conn (system)", "relay threads added", "idle CPU ms/s",
              "SIGTERM → exit s", "close_notify", "EOF", "reset", "still open", "last close_notify s"]
    return header, rows


def report(ctx, cfg, mode, results, targets, idle_results, elapsed):
    lines = [f"## `make bench{'' if mode == 'quick' else '-full'}` ({mode} mode) — {ctx['date']}", ""]
    if ctx.get("busy"):
        lines += [f"**Warning: the machine was busy with other work ({ctx['busy']}); wall-clock figures are unreliable, "
                  "the relay-CPU-per-unit columns much less so. Re-run when it is quiet.**", ""]
    lines += [f"- machine: {ctx['cpu']}, {ctx['cores']} cores, {ctx['mem_gib']} GiB, Linux {ctx['kernel']}; "
              f"load average at start {ctx['load_start']}, at end {ctx['load_end']}; nofile {ctx['nofile']}",
              f"- {ctx['openssl']}; `openssl speed -evp aes-256-gcm` (16 KiB blocks, 1 core): "
              f"{fmt(ctx['aes256gcm_16k_mbps_1core'])} MB/s",
              "- versions: " + "; ".join(f"{k}: {v}" for k, v in ctx["versions"].items()),
              f"- negotiated (as seen by the client): " + "; ".join(
                  f"{t}: {ctx['negotiated'].get(t, '—')}" for t in targets),
              f"- {cfg['rounds']} interleaved rounds (fresh instances, rotated order), {cfg['secs']} s per measure window; "
              f"M5/M6: {', '.join(f'{n:,}' for n in cfg['idle'])} idle clients, {cfg['idle_rounds']} run(s) each"
              + (" (quick mode: 5,000 only in `make bench-full`)" if mode == "quick" else ""),
              f"- processes outside the bench used about {100 * ctx.get('foreign_cpu_share', 0):.0f}% of the machine's CPU during the run "
              "(busy CPU time from /proc/stat minus the bench's own, children included)",
              f"- whole run: {elapsed:.0f} s. ★ = best anchor (stunnel, haproxy, nginx, socat); ratios are medians over the best anchor's median.",
              ""]
    m1 = metric_table(results, targets, [("m1_up", "M1 up"), ("m1_down", "M1 down")], "mbps", True, "MB/s",
                      "cpu_s_per_gb", "s/GB", 3)
    lines += table("M1 bulk throughput, 1 connection", "MB/s = 10⁶ B/s of payload; up = client→backend, down = backend→client. Higher is better; relay CPU lower is better.", *m1)
    m2 = metric_table(results, targets, [("m2_8_up", "M2 8 conns up"), ("m2_8_down", "M2 8 conns down"),
                                         ("m2_64_up", "M2 64 conns up"), ("m2_64_down", "M2 64 conns down")],
                      "mbps", True, "MB/s", "cpu_s_per_gb", "s/GB", 3)
    lines += table("M2 aggregate throughput", "Sum over all connections.", *m2)
    m3 = metric_table(results, targets, [("m3_1", "M3 p50, 1 conn"), ("m3_32", "M3 p50, 32 conns")], "p50_us", False, "µs",
                      "cpu_us_per_rt", "µs/round trip", 1, nd=1, switches="round trip")
    m3p99 = metric_table(results, targets, [("m3_1", "M3 p99, 1 conn"), ("m3_32", "M3 p99, 32 conns")], "p99_us", False, "µs",
                         "cpu_us_per_rt", "µs/round trip", 1, nd=1, switches="round trip")
    lines += table("M3 64-byte ping-pong round trip (client, relay, backend all pinned to CPU 0)",
                   "Lower is better.", m3[0], m3[1] + m3p99[1])
    m4 = metric_table(results, targets, [("m4_full", "M4 full handshakes"), ("m4_resumed", "M4 resumed (tickets)")],
                      "per_sec", True, "conn/s", "cpu_us_per_hs", "µs/conn", 0, switches="conn")
    reuse = []
    for t in targets:
        runs = [r for r in results[t]["m4_resumed"] if isinstance(r, dict) and r.get("count")]
        n, k = sum(r["count"] for r in runs), sum(r.get("reused", 0) for r in runs)
        reuse.append(f"{t} {100 * k / n:.0f}%" if n else f"{t} —")
    lines += table("M4 new TLS 1.3 connections per second (4 client threads)",
                   "Each: TCP connect, handshake (ECDSA P-256, X25519), one byte to the backend and back, close_notify. "
                   "Share of 'resumed' connections that really resumed: " + ", ".join(reuse) + ".", *m4)
    if idle_results:
        lines += table("M5 memory per idle connection, M6 SIGTERM with idle clients",
                       "PSS of the relay's processes (smaps_rollup) after minus before, per established connection; "
                       "KernelStack/Slab: system-wide /proc/meminfo growth per connection (includes the load generator's sockets, "
                       "the same for every target). M6: clients that saw close_notify vs EOF without it vs reset vs still open "
                       "0.3 s after the relay's last process exited (or after the wait).", *idle_table(idle_results, cfg["idle"]))
    return "\n".join(lines)


# ---------------------------------------------------------------- main

def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mode", choices=sorted(MODES), default="quick")
    ap.add_argument("--only", help="comma-separated targets (tlsrelay,stunnel,haproxy,nginx,socat,ceiling)")
    ap.add_argument("--skip-idle", action="store_true", help="skip M5/M6")
    ap.add_argument("--skip-throughput", action="store_true", help="skip M1–M4")
    ap.add_argument("--tuned", action="store_true",
                    help=f"add the target '{TUNED}' (GLIBC_TUNABLES=glibc.malloc.tcache_count=7, glibc's default)")
    ap.add_argument("--baseline", metavar="BIN",
                    help="add the target 'tlsrelay baseline': another tlsrelay build, for an A/B in one run")
    ap.add_argument("--keep", action="store_true", help="keep the temp dir with configs and logs")
    args = ap.parse_args()
    cfg = MODES[args.mode]
    started = time.monotonic()
    busy0, own0 = cpu_busy_s(), own_cpu_s()

    for b in (TLSRELAY, LOAD):
        if not os.path.exists(b):
            sys.exit(f"{b} missing: run `cargo build --release --bins` (make bench does)")
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    missing = ensure_anchors()

    BASELINE_BIN[0] = args.baseline
    targets = (["tlsrelay"] + ([BASELINE] if args.baseline else []) + ([TUNED] if args.tuned else [])
               + [a for a in ANCHORS if a not in missing] + [CEILING])
    if args.only:
        aliases = {"ceiling": CEILING, "tuned": TUNED, "baseline": BASELINE}
        wanted = {aliases.get(w.strip(), w.strip()) for w in args.only.split(",")}
        targets = [t for t in targets if t in wanted]
    log(f"bench ({args.mode}): targets {targets}")

    tmp = tempfile.mkdtemp(prefix="tlsrelay-bench-")
    env = Env(tmp)
    subprocess.run([TLSRELAY, "gen-cert", "--out", env.certs], check=True, capture_output=True)
    with open(env.pem, "w") as f:
        f.write(open(env.crt).read() + open(env.key).read())
    ctx = context(cfg)
    ctx["pressure_start"] = cpu_pressure()
    if ctx["pressure_start"] and ctx["pressure_start"] > 10:
        log(f"note: CPU pressure {ctx['pressure_start']:.0f}% before the start (includes a build just run)")
    log(f"machine: {ctx['cpu']}, load {ctx['load_start']}; AES-256-GCM {fmt(ctx['aes256gcm_16k_mbps_1core'])} MB/s/core")

    keys = ["m1_up", "m1_down", "m2_8_up", "m2_8_down", "m2_64_up", "m2_64_down", "m3_1", "m3_32", "m4_full", "m4_resumed"]
    results = {t: {k: [] for k in keys} for t in targets}
    ctx["negotiated"] = {}
    try:
        if not args.skip_throughput:
            for rnd in range(cfg["rounds"]):
                order = targets[rnd % len(targets):] + targets[:rnd % len(targets)]
                for t in order:
                    log(f"round {rnd + 1}/{cfg['rounds']}: {t} (M3, M1, M2, M4) at {time.monotonic() - started:.0f} s")
                    try:
                        inst = Instance(env, t)
                    except RuntimeError as e:
                        log(str(e))
                        for k in keys:
                            results[t][k].append({"failed": str(e)})
                        continue
                    try:
                        throughput_round(inst, cfg["secs"], results)
                    finally:
                        inst.close()
                    r = results[t]["m1_up"][-1]
                    if r.get("version"):
                        ctx["negotiated"][t] = f"{r['version']} {r['cipher']}"
        idle_results = {}
        if not args.skip_idle:
            relays = [t for t in targets if t != CEILING]
            idle_results = {t: [] for t in relays}
            for n in cfg["idle"]:
                for rnd in range(cfg["idle_rounds"]):
                    order = relays[rnd % len(relays):] + relays[:rnd % len(relays)]
                    for t in order:
                        log(f"M5/M6 {n} idle: {t} run {rnd + 1}/{cfg['idle_rounds']} at {time.monotonic() - started:.0f} s")
                        try:
                            idle_results[t].append(idle_run(env, t, n, cfg))
                        except RuntimeError as e:
                            idle_results[t].append({"n": n, "failed": str(e)})
    finally:
        if not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)
    ctx["load_end"] = load_text()
    wall = time.monotonic() - started
    foreign = (cpu_busy_s() - busy0) - (own_cpu_s() - own0)
    ctx["foreign_cpu_share"] = max(0.0, foreign / (wall * (os.cpu_count() or 1)))
    # CPU pressure at start also counts the build `make bench` just ran, so only the CPU that
    # other processes used during the run decides the warning.
    if ctx["foreign_cpu_share"] > 0.05:
        ctx["busy"] = (f"processes outside the bench used about {100 * ctx['foreign_cpu_share']:.0f}% of the machine's CPU "
                       "during the run")
    text = report(ctx, cfg, args.mode, results, targets, idle_results, time.monotonic() - started)
    print(text)
    os.makedirs(OUT_DIR, exist_ok=True)
    write(os.path.join(OUT_DIR, f"latest-{args.mode}.md"), text + "\n")
    with open(os.path.join(OUT_DIR, f"latest-{args.mode}.json"), "w") as f:
        json.dump({"context": ctx, "mode": args.mode, "config": cfg, "results": results, "idle": idle_results}, f, indent=1)
    log(f"logs and configs: {tmp if args.keep else 'removed (--keep keeps them)'}; results: {OUT_DIR}/latest-{args.mode}.{{md,json}}")


if __name__ == "__main__":
    main()
