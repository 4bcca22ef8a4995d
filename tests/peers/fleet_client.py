#!/usr/bin/env python3
"""A fleet of TLS clients behind a balancer, for the "more than one machine" test (issue 13).

fleet_client.py HOST PORT --ca CA --clients N [--timeout SECS]

Each client connects, sends "hello I\\n" and reads it back (an echo service sits behind
the relays), then waits. When the server ends its connection the end is classified with
suppress_ragged_eofs=False: "clean" (close_notify; we answer with ours), "truncated"
(EOF without close_notify) or "reset". After a clean end the client reconnects (retrying a
failed connect or handshake every 0.2 s) and echoes again. Lines on stdout:

  READY {"ok": N}                 every client has had its first echo
  CONN {"client": I, "port": P}   each echoed connection's local port, first and reconnected
  END {"client": I, "kind": K}    a server-side end
  DONE {...}                      at stdin EOF: the counts (connections are left to the test)
"""

import argparse
import json
import socket
import ssl
import sys
import threading
import time

LOCK = threading.Lock()


def emit(tag, fields):
    with LOCK:
        sys.stdout.write(f"{tag} {json.dumps(fields)}\n")
        sys.stdout.flush()


class Client(threading.Thread):
    def __init__(self, index, args, context, ready, stopping):
        super().__init__(daemon=True)
        self.index, self.args, self.context = index, args, context
        self.ready, self.stopping = ready, stopping
        self.ends, self.reconnects, self.failed_attempts = [], 0, 0
        self.tls = None
        self.error = ""

    def connect(self):
        """Connects and echoes once, retrying until the deadline."""
        while time.monotonic() < self.args.deadline:
            try:
                raw = socket.create_connection((self.args.host, self.args.port), timeout=5)
                port = raw.getsockname()[1]  # wrap_socket takes the descriptor over
                tls = self.context.wrap_socket(raw, server_hostname="localhost", suppress_ragged_eofs=False)
                line = f"hello {self.index}\n".encode()
                tls.sendall(line)
                got = b""
                while len(got) < len(line):
                    chunk = tls.recv(len(line) - len(got))
                    if not chunk:
                        raise ConnectionError("ended before the echo")
                    got += chunk
                if got != line:
                    raise ConnectionError(f"echo {got!r}")
                tls.settimeout(None)
                emit("CONN", {"client": self.index, "port": port})
                self.tls = tls
                return True
            except (OSError, ssl.SSLError, ConnectionError) as err:
                self.failed_attempts += 1
                self.error = str(err)
                time.sleep(0.2)
        return False

    def wait_end(self):
        """Blocks until the server ends the stream (or our own stop); returns its kind."""
        try:
            data = self.tls.recv(4096)
            if data:
                return "data"
            return "clean"
        except ssl.SSLEOFError:
            return "truncated"
        except (ConnectionResetError, BrokenPipeError):
            return "reset"
        except (ssl.SSLError, OSError) as err:
            if self.stopping.is_set():
                return "stopped"
            return f"error: {err}"

    def run(self):
        if not self.connect():
            self.ready.release()
            return
        self.ready.release()
        while True:
            kind = self.wait_end()
            if kind == "stopped":
                return
            self.ends.append(kind)
            emit("END", {"client": self.index, "kind": kind})
            if kind == "clean":
                try:
                    self.tls.unwrap()  # answer the close_notify
                except (OSError, ssl.SSLError):
                    pass
            self.tls.close()
            if self.stopping.is_set() or kind != "clean":
                return
            if self.connect():
                self.reconnects += 1
            else:
                return



def main():
    p = argparse.ArgumentParser()
    p.add_argument("host")
    p.add_argument("port", type=int)
    p.add_argument("--ca", required=True)
    p.add_argument("--clients", type=int, required=True)
    p.add_argument("--timeout", type=float, default=60.0)
    args = p.parse_args()
    args.deadline = time.monotonic() + args.timeout
    context = ssl.create_default_context(cafile=args.ca)
    ready = threading.Semaphore(0)
    stopping = threading.Event()
    clients = [Client(i, args, context, ready, stopping) for i in range(args.clients)]
    for client in clients:
        client.start()
        time.sleep(0.002)  # a steady arrival, not a SYN burst
    for _ in clients:
        ready.acquire()
    emit("READY", {"ok": sum(1 for c in clients if c.tls is not None)})
    sys.stdin.read()
    stopping.set()
    kinds = [k for c in clients for k in c.ends]
    errors = [c.error for c in clients if c.error]
    emit("DONE", {
        "clients": len(clients),
        "end_clean": kinds.count("clean"),
        "end_truncated": kinds.count("truncated"),
        "end_reset": kinds.count("reset"),
        "end_other": len(kinds) - kinds.count("clean") - kinds.count("truncated") - kinds.count("reset"),
        "reconnected": sum(c.reconnects for c in clients),
        "failed_attempts": sum(c.failed_attempts for c in clients),
        "first_error": errors[0] if errors else "",
    })


if __name__ == "__main__":
    main()
