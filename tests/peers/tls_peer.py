#!/usr/bin/env python3
"""A TLS client for tlsrelay's integration tests, independent of OpenSSL's Rust bindings.

Built on ssl.SSLObject over a plain socket (MemoryBIO), not ssl.SSLSocket, because:
  * it can send close_notify and keep reading application data afterwards
    (the TLS 1.3 half-close: our close_notify goes out, the relay's reply still
    reaches us, then its close_notify);
  * it sees exactly how the server's stream ended: the server's close_notify
    ("clean"), a TCP EOF without it ("truncated": SSLEOFError, reason
    UNEXPECTED_EOF_WHILE_READING), or a TCP reset ("reset": ConnectionResetError
    from the raw socket). No ragged-EOF suppression exists on this path, so a
    truncation can never read as a clean close (the trap of
    suppress_ragged_eofs=True).

Single mode prints "READY" after the handshake, "EXPECTED" once --expect N bytes
arrived (or the stream ended first), then one JSON line (flat object):
  handshake  "ok" or how it failed ("eof", "reset", "timeout", "error:...")
  version    negotiated protocol, e.g. "TLSv1.3"
  sent, received, pattern_ok, sha256, text (the first 200 bytes, latin-1)
  end        clean | truncated | reset | timeout | alert:REASON | error:...
  answered   what we did after the server's close_notify: yes | no | silent | n/a
  after      silent mode only: how the server then ended TCP: fin | reset | timeout

--clients N opens N connections in threads, prints "READY {json}" once every
handshake has finished, then obeys stdin lines: "echo TEXT" (every client sends
TEXT and reads it back; prints "ECHO {json}"), "end" or stdin EOF (wait for the
server to end every connection). It finally prints "DONE {json}" with counts
end_clean, end_truncated, end_reset, end_timeout, end_error (and first_error).
"""

import argparse
import hashlib
import json
import queue
import select
import socket
import ssl
import struct
import sys
import threading
import time

CHUNK = 65536


def pattern(n):
    """The deterministic payload of --send-bytes; the Rust tests build the same (i % 251)."""
    block = bytes(i % 251 for i in range(251))
    return (block * (n // 251 + 1))[:n]


class Ended(Exception):
    """The server's side of the stream ended; .kind is clean, truncated, reset or timeout."""

    def __init__(self, kind):
        super().__init__(kind)
        self.kind = kind


class Conn:
    """One TLS connection driven by hand: raw socket + SSLObject + two memory BIOs."""

    def __init__(self, args, deadline):
        self.deadline = deadline
        self.sock = socket.create_connection((args.host, args.port), timeout=self.remaining())
        self.inc = ssl.MemoryBIO()
        self.out = ssl.MemoryBIO()
        self.obj = make_context(args).wrap_bio(self.inc, self.out, server_hostname=args.servername)
        self.data = bytearray()
        self.sent = 0
        self.version = None
        self.end = None  # how the server's side ended, once it has

    def remaining(self):
        return max(0.001, self.deadline - time.monotonic())

    def flush(self):
        """Sends whatever the TLS layer produced (records, alerts) to the socket."""
        pending = self.out.read()
        if pending:
            self.sock.settimeout(self.remaining())
            self.sock.sendall(pending)

    def fill(self):
        """One raw recv into the TLS layer; a reset or the deadline sets self.end."""
        if time.monotonic() >= self.deadline:
            self.end = "timeout"
            return
        self.sock.settimeout(self.remaining())
        try:
            raw = self.sock.recv(CHUNK)
        except socket.timeout:
            self.end = "timeout"
            return
        except ConnectionResetError:
            self.end = "reset"
            return
        if raw:
            self.inc.write(raw)
        else:
            self.inc.write_eof()

    def handshake(self):
        while True:
            try:
                self.obj.do_handshake()
                self.flush()
                self.version = self.obj.version()
                return
            except ssl.SSLWantReadError:
                self.flush()
                self.fill()
                if self.end:
                    raise Ended(self.end)

    def send(self, payload):
        view = memoryview(payload)
        while view:
            n = self.obj.write(view[:CHUNK])
            view = view[n:]
            self.sent += n
            self.flush()

    def decode(self):
        """Moves every complete record out of the TLS layer into self.data.

        Sets self.end to "clean" on the server's close_notify, "truncated" on a
        TCP EOF without it, "alert:REASON" on a fatal alert; returns when more
        raw bytes are needed or the stream has ended."""
        while self.end is None:
            try:
                chunk = self.obj.read(CHUNK)
            except ssl.SSLWantReadError:
                self.flush()  # TLS 1.3 key updates may want an answer
                return
            except ssl.SSLZeroReturnError:
                self.end = "clean"
                return
            except ssl.SSLEOFError:
                self.end = "truncated"
                return
            except ssl.SSLError as err:  # e.g. an alert the server sent instead of close_notify
                self.end = "alert:%s" % (err.reason or err)
                return
            if not chunk:  # CPython returns b'' for a received close_notify
                self.end = "clean"
                return
            self.data += chunk

    def read_step(self):
        """Decodes what is buffered, then one raw recv and decodes again."""
        self.decode()
        if self.end is None:
            self.fill()
            self.decode()

    def read_until(self, n):
        """Reads until n bytes arrived or the stream ended (the end is kept for later)."""
        while len(self.data) < n and self.end is None:
            self.read_step()

    def read_until_end(self):
        """Reads until the server ends the stream; returns the end kind."""
        while self.end is None:
            self.read_step()
        return self.end

    def send_close_notify(self):
        try:
            self.obj.unwrap()
        except ssl.SSLWantReadError:
            pass  # sent; the peer's close_notify has not arrived yet
        self.flush()

    def answer(self, mode):
        """What we do after the server's close_notify; returns how the server then ended TCP."""
        if mode == "yes":
            self.send_close_notify()
            self.sock.shutdown(socket.SHUT_WR)
            return self.drain_raw(min(self.remaining(), 3.0))
        if mode == "no":
            self.sock.shutdown(socket.SHUT_WR)  # a FIN without close_notify, like gnutls-cli
            return self.drain_raw(min(self.remaining(), 3.0))
        return self.drain_raw(self.remaining())  # silent: hold the socket, say nothing

    def drain_raw(self, seconds):
        """Reads raw bytes until the server ends TCP; 'fin', 'reset' or 'timeout'."""
        end_at = time.monotonic() + seconds
        while True:
            left = end_at - time.monotonic()
            if left <= 0:
                return "timeout"
            self.sock.settimeout(left)
            try:
                if not self.sock.recv(CHUNK):
                    return "fin"
            except socket.timeout:
                return "timeout"
            except (ConnectionResetError, BrokenPipeError):
                return "reset"

    def reset(self):
        """Closes with SO_LINGER {1, 0}: the kernel sends RST instead of FIN."""
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.sock.close()

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass


def make_context(args):
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.load_verify_locations(args.ca)
    if args.tls != "any":
        version = ssl.TLSVersion.TLSv1_2 if args.tls == "1.2" else ssl.TLSVersion.TLSv1_3
        ctx.minimum_version = version
        ctx.maximum_version = version
    return ctx


def classify_handshake_error(err):
    if isinstance(err, Ended):
        return err.kind
    if isinstance(err, ssl.SSLEOFError):
        return "eof"
    if isinstance(err, (ConnectionResetError, BrokenPipeError)):
        return "reset"
    if isinstance(err, socket.timeout):
        return "timeout"
    return "error:%s" % err


def payload(args):
    if args.send_bytes is not None:
        return pattern(args.send_bytes)
    return (args.send or "").encode()


def report(conn, handshake, end, answered="n/a", after=None):
    data = bytes(conn.data) if conn else b""
    out = {
        "handshake": handshake,
        "version": conn.version if conn else None,
        "sent": conn.sent if conn else 0,
        "received": len(data),
        "pattern_ok": data == pattern(len(data)),
        "sha256": hashlib.sha256(data).hexdigest(),
        "text": data[:200].decode("latin-1"),
        "end": end,
        "answered": answered,
        "after": after,
    }
    print(json.dumps(out), flush=True)


def run_single(args):
    deadline = time.monotonic() + args.timeout
    conn = None
    try:
        conn = Conn(args, deadline)
        conn.handshake()
    except Exception as err:  # every failure is data for the test
        report(conn, classify_handshake_error(err), classify_handshake_error(err))
        return
    print("READY", flush=True)
    try:
        end = script(conn, args)
    except Ended as e:
        end = e.kind
    except (ConnectionResetError, BrokenPipeError):
        end = "reset"
    except Exception as err:
        end = "error:%s" % err
    answered, after = "n/a", None
    if end == "clean" and args.then != "close-notify":
        try:
            answered, after = args.answer_close_notify, conn.answer(args.answer_close_notify)
        except OSError as err:
            after = "error:%s" % err
    if end != "sent-reset":
        conn.close()
    report(conn, "ok", end, answered, after)


def script(conn, args):
    """Send, optionally read, pause, then perform the ending action; returns the end kind."""
    conn.send(payload(args))
    if args.expect:
        conn.read_until(args.expect)
        print("EXPECTED", flush=True)
    if args.pause:
        time.sleep(args.pause)
    if args.send_late:
        conn.send(args.send_late.encode())
    if args.then == "reset":
        conn.reset()
        return "sent-reset"
    if args.then == "eof":
        conn.sock.shutdown(socket.SHUT_WR)
    elif args.then == "close-notify":
        conn.send_close_notify()
    return conn.read_until_end()


class Client(threading.Thread):
    """One of --clients N: handshake, then serve commands until the server ends it."""

    def __init__(self, args, deadline, ready):
        super().__init__(daemon=True)
        self.args, self.deadline, self.ready = args, deadline, ready
        self.cmds = queue.Queue()
        self.results = queue.Queue()
        self.wake_r, self.wake_w = socket.socketpair()
        self.handshake = None
        self.end = None

    def command(self, cmd):
        self.cmds.put(cmd)
        self.wake_w.send(b"x")

    def run(self):
        try:
            self.conn = Conn(self.args, self.deadline)
            self.conn.handshake()
            self.handshake = "ok"
        except Exception as err:
            self.handshake = self.end = classify_handshake_error(err)
        self.ready.release()
        if self.handshake != "ok":
            return
        try:
            self.serve()
        except Ended as e:
            self.end = e.kind
        except (ConnectionResetError, BrokenPipeError):
            self.end = "reset"
        except Exception as err:
            self.end = "error:%s" % err
        if self.end == "clean":
            try:
                self.conn.answer(self.args.answer_close_notify)
            except OSError:
                pass
        self.conn.close()

    def serve(self):
        expect = None
        while True:
            self.conn.decode()
            if expect is not None and len(self.conn.data) >= expect:
                self.results.put(True)
                expect = None
            if self.conn.end:
                raise Ended(self.conn.end)
            # poll, not select: with hundreds of clients descriptors pass FD_SETSIZE (1024).
            poller = select.poll()
            poller.register(self.conn.sock, select.POLLIN)
            poller.register(self.wake_r, select.POLLIN)
            ready = {fd for fd, _ in poller.poll(self.conn.remaining() * 1000)}
            if not ready:
                raise Ended("timeout")
            if self.wake_r.fileno() in ready:
                self.wake_r.recv(64)
                while not self.cmds.empty():
                    text = self.cmds.get_nowait()
                    expect = len(self.conn.data) + len(text)
                    self.conn.send(text)
            if self.conn.sock.fileno() in ready:
                self.conn.fill()


def run_clients(args):
    deadline = time.monotonic() + args.timeout
    ready = threading.Semaphore(0)
    clients = [Client(args, deadline, ready) for _ in range(args.clients)]
    for c in clients:
        c.start()
    for _ in clients:
        ready.acquire(timeout=max(0.001, deadline - time.monotonic()))
    ok = sum(1 for c in clients if c.handshake == "ok")
    print("READY " + json.dumps({"ok": ok, "failed": len(clients) - ok}), flush=True)
    for line in sys.stdin:
        line = line.rstrip("\n")
        if line.startswith("echo "):
            echo_all(clients, line[5:].encode(), deadline)
        elif line == "end":
            break
    for c in clients:
        c.join(max(0.001, deadline - time.monotonic()))
    counts = {"clients": len(clients), "handshake_ok": ok}
    for kind in ("clean", "truncated", "reset", "timeout", "error"):
        counts["end_" + kind] = 0
    counts["first_error"] = None
    for c in clients:
        if c.handshake != "ok":
            continue
        kind = c.end if c.end in ("clean", "truncated", "reset", "timeout") else "error"
        if c.is_alive():
            kind = "timeout"
        counts["end_" + kind] += 1
        if kind == "error" and counts["first_error"] is None:
            counts["first_error"] = c.end
    print("DONE " + json.dumps(counts), flush=True)


def echo_all(clients, text, deadline):
    """Every live client sends text and waits for it to come back."""
    live = [c for c in clients if c.handshake == "ok" and c.end is None and c.is_alive()]
    for c in live:
        c.command(text)
    ok = 0
    for c in live:
        try:
            if c.results.get(timeout=max(0.001, deadline - time.monotonic())):
                ok += 1
        except queue.Empty:
            pass
    print("ECHO " + json.dumps({"ok": ok, "failed": len(clients) - ok}), flush=True)


def raise_fd_limit():
    """--clients 500 needs ~1500 descriptors (socket + wake-up pair per client)."""
    import resource
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and (hard == resource.RLIM_INFINITY or soft < hard):
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("host")
    p.add_argument("port", type=int)
    p.add_argument("--ca", required=True)
    p.add_argument("--servername", default="localhost")
    p.add_argument("--tls", choices=["1.2", "1.3", "any"], default="any")
    p.add_argument("--send", help="text to send after the handshake")
    p.add_argument("--send-bytes", type=int, help="send N bytes of the i %% 251 pattern")
    p.add_argument("--expect", type=int, default=0, help="read at least N bytes before the ending action")
    p.add_argument("--pause", type=float, default=0, help="seconds to sleep before the ending action")
    p.add_argument("--send-late", help="text to send after --expect/--pause, before the ending action")
    p.add_argument("--then", choices=["close-notify", "eof", "reset", "wait"], default="wait")
    p.add_argument("--answer-close-notify", choices=["yes", "no", "silent"], default="yes")
    p.add_argument("--timeout", type=float, default=30.0, help="overall deadline in seconds")
    p.add_argument("--clients", type=int, default=0)
    args = p.parse_args()
    if args.clients:
        raise_fd_limit()
        run_clients(args)
    else:
        run_single(args)


if __name__ == "__main__":
    main()
