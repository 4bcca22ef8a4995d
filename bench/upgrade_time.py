#!/usr/bin/env python3
"""Upgrade benchmark (issue 5): time from SIGUSR2 to the old process's exit with N connected
hub clients that answer close_notify. Usage: python3 bench/upgrade_time.py [N] [ROUNDS]

Starts target/release/tlsrelay in hub mode on 127.0.0.1 with fresh certificates, connects N
Python ssl clients, upgrades ROUNDS times, and prints the times and how every old client ended.
"""
import os
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time

BIN = os.path.join(os.path.dirname(__file__), "..", "target", "release", "tlsrelay")


def start_daemon(tmp, clients):
    subprocess.run([BIN, "gen-cert", "--out", tmp], check=True, capture_output=True)
    pid_file = os.path.join(tmp, "tlsrelay.pid")
    log = open(os.path.join(tmp, "log"), "w")
    subprocess.Popen(
        [BIN, "serve", "--listen", "127.0.0.1:0", "--cert", f"{tmp}/server.crt", "--key", f"{tmp}/server.key",
         "--pid-file", pid_file, "--max-clients", str(clients + 100)],
        stderr=log, env={**os.environ, "RUST_LOG": "warn"}, start_new_session=True)
    deadline = time.time() + 10
    while time.time() < deadline:
        text = open(os.path.join(tmp, "log")).read()
        if "listening on " in text and text.split("listening on ")[1].count("\n"):
            return pid_file, int(text.split("listening on 127.0.0.1:")[1].split()[0])
        time.sleep(0.05)
    sys.exit("daemon did not start")


def client(port, ca, ready, ends, index):
    ctx = ssl.create_default_context(cafile=ca)
    try:
        sock = ctx.wrap_socket(socket.create_connection(("127.0.0.1", port)), server_hostname="localhost",
                               suppress_ragged_eofs=False)
        sock.settimeout(60)
        data = b""
        while b"\n" not in data:
            data += sock.recv(4096)
        ready.release()
        while True:
            chunk = sock.recv(4096)
            if not chunk:
                ends[index] = "clean"
                sock.unwrap()  # answer with our close_notify
                break
            data += chunk
    except ssl.SSLEOFError:
        ends[index] = "truncated"
        ready.release()
    except Exception as err:  # noqa: BLE001 - a benchmark records every outcome
        ends[index] = type(err).__name__
        ready.release()


def wait_exit(pid, deadline):
    """True once pid is gone or a zombie (the first daemon is our child and nobody reaps it yet)."""
    while time.time() < deadline:
        try:
            with open(f"/proc/{pid}/stat") as stat:
                if stat.read().rsplit(")", 1)[1].split()[0] == "Z":
                    return True
        except FileNotFoundError:
            return True
        time.sleep(0.005)
    return False


def main():
    clients = int(sys.argv[1]) if len(sys.argv) > 1 else 1000
    rounds = int(sys.argv[2]) if len(sys.argv) > 2 else 3
    threading.stack_size(256 * 1024)
    with tempfile.TemporaryDirectory() as tmp:
        pid_file, port = start_daemon(tmp, clients)
        try:
            for round_no in range(1, rounds + 1):
                ready, ends = threading.Semaphore(0), [None] * clients
                threads = [threading.Thread(target=client, args=(port, f"{tmp}/ca.crt", ready, ends, i), daemon=True)
                           for i in range(clients)]
                for thread in threads:
                    thread.start()
                for _ in range(clients):
                    ready.acquire(timeout=60)
                old = int(open(pid_file).read())
                start = time.time()
                os.kill(old, signal.SIGUSR2)
                exited = wait_exit(old, start + 30)
                took = time.time() - start
                for thread in threads:
                    thread.join(timeout=10)
                outcome = {kind: ends.count(kind) for kind in sorted(set(map(str, ends)))}
                print(f"round {round_no}: {clients} clients: old process exited {exited} after {took:.3f} s; "
                      f"client ends {outcome}; new pid {open(pid_file).read().strip()}")
        finally:
            os.kill(int(open(pid_file).read()), signal.SIGTERM)


if __name__ == "__main__":
    main()
