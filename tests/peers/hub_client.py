#!/usr/bin/env python3
"""A scripted hub client (Python ssl, suppress_ragged_eofs=False) for tests/hub*.rs.

Single mode: one connection. After the handshake it prints "READY VERSION", then
every complete line the server sends as "LINE HEX" (the bytes without the "\\n",
hex-encoded so nothing is lost), and at the end "END KIND" where KIND is how the
server ended the stream:
  clean      recv() returned b'' (the server's close_notify arrived); we answer
             with our own close_notify unless --no-answer
  truncated  SSLEOFError: TCP EOF without close_notify
  reset      ECONNRESET
  timeout    the --timeout deadline passed
  alert:R / error:E   anything else
Bytes after the last "\\n" are printed as "PARTIAL HEX" just before END.

stdin commands (one a line):
  send HEX            send these bytes
  flood TAG N SIZE [RATE]  send N lines "flood TAG SEQ PAD" of SIZE bytes each (plus
                      "\\n"), at most RATE bytes/s if given, then "floodend TAG N"; prints
                      "FLOODSENT TAG" once all is written
  close               send close_notify, then keep reading until the server ends
  drop                close TCP (FIN) without close_notify; prints "END dropped"
  reset               close TCP with RST (SO_LINGER 0); prints "END sent-reset"
  pause / resume      stop / restart reading the socket (a client that stops reading);
                      "pause" prints "PAUSED" once it holds
Relayed flood lines ("<NICK> flood TAG SEQ PAD") are checked here, not printed: on
"<NICK> floodend TAG N" it prints "FLOOD TAG GOT ERRORS FIRST_ERROR" (GOT = flood lines
received, ERRORS = lines out of order, missing or damaged).

--many N: N connections, no stdin. Prints "READY OK_COUNT" after every handshake,
then waits until the server ends every connection and prints one line
"CLIENT I END LAST_LINE_HEX" per connection and "DONE {json}" with counts.
"""

import argparse
import json
import os
import select
import socket
import ssl
import struct
import sys
import time

CHUNK = 65536
FLOOD_BURST = 65536  # flood bytes queued ahead at most


def flood_line(tag, seq, size):
    """The deterministic flood line (without "\\n"); the checker rebuilds it."""
    head = "flood %s %d " % (tag, seq)
    pad = size - len(head)
    return (head + (chr(ord("a") + seq % 26) * max(pad, 0))).encode()


class Conn:
    def __init__(self, args, deadline):
        self.args = args
        self.deadline = deadline
        raw = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if args.rcvbuf:
            raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, args.rcvbuf)
        raw.settimeout(max(0.01, deadline - time.monotonic()))
        raw.connect((args.host, args.port))
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.load_verify_locations(args.ca)
        self.sock = ctx.wrap_socket(
            raw, server_hostname=args.servername, suppress_ragged_eofs=False, do_handshake_on_connect=False
        )
        self.sock.do_handshake()
        self.sock.setblocking(False)
        self.buf = bytearray()
        self.out = bytearray()
        self.lines = []  # collected lines (many mode)
        self.end = None
        self.paused = False
        self.floods = {}  # tag -> [got, errors, first_error]
        self.flood_pending = None  # tag whose FLOODSENT is due once self.out drains
        self.flood = None  # the flood being sent, see flood_fill

    def flood_fill(self):
        """Queues the next flood lines, at most `rate` bytes a second (0: no limit)."""
        f = self.flood
        if f is None:
            return
        budget = FLOOD_BURST + f["rate"] * (time.monotonic() - f["start"]) if f["rate"] else float("inf")
        while f["seq"] < f["n"] and len(self.out) < FLOOD_BURST and f["bytes"] < budget:
            line = flood_line(f["tag"], f["seq"], f["size"]) + b"\n"
            self.out += line
            f["bytes"] += len(line)
            f["seq"] += 1
        if f["seq"] == f["n"]:
            self.out += b"floodend %s %d\n" % (f["tag"].encode(), f["n"])
            self.flood_pending = f["tag"]
            self.flood = None

    def fileno(self):
        return self.sock.fileno()

    def read_ready(self, emit):
        """Reads everything available; emit(line_bytes) per complete line; sets self.end."""
        while self.end is None:
            try:
                data = self.sock.recv(CHUNK)
            except (ssl.SSLWantReadError, ssl.SSLWantWriteError):
                return
            except ssl.SSLEOFError:
                self.end = "truncated"
                break
            except ssl.SSLZeroReturnError:
                self.end = "clean"
                break
            except ssl.SSLError as err:
                self.end = "alert:%s" % (err.reason or err)
                break
            except ConnectionResetError:
                self.end = "reset"
                break
            except OSError as err:
                self.end = "error:%s" % err
                break
            if not data:
                self.end = "clean"
                break
            self.buf += data
            while True:
                at = self.buf.find(b"\n")
                if at < 0:
                    break
                line = bytes(self.buf[:at])
                del self.buf[: at + 1]
                emit(line)

    def write_ready(self):
        while self.out:
            try:
                n = self.sock.send(self.out[:16384])
            except (ssl.SSLWantWriteError, ssl.SSLWantReadError):
                return
            except OSError as err:
                self.end = self.end or "error:send %s" % err
                self.out.clear()
                return
            del self.out[:n]

    def answer(self):
        """Our close_notify after the server's (so its log says clean)."""
        if self.args.no_answer:
            return
        try:
            self.sock.settimeout(max(0.01, min(3.0, self.deadline - time.monotonic())))
            self.sock.unwrap()
        except (OSError, ValueError):
            pass

    def check_flood(self, line):
        """Relayed flood lines are verified here instead of printed; returns True if consumed."""
        if not line.startswith(b"<"):
            return False
        close = line.find(b"> ")
        if close < 0:
            return False
        body = line[close + 2 :]
        parts = body.split(b" ", 3)
        if parts[0] == b"flood" and len(parts) == 4:
            tag = parts[1].decode()
            state = self.floods.setdefault(tag, [0, 0, ""])
            expect = flood_line(tag, state[0], len(body))
            if body != expect:
                state[1] += 1
                if not state[2]:
                    state[2] = "seq%d:len%d:%s" % (state[0], len(body), body[:40].decode("latin-1"))
            state[0] += 1
            return True
        if parts[0] == b"floodend" and len(parts) == 3:
            tag = parts[1].decode()
            state = self.floods.setdefault(tag, [0, 0, ""])
            want = int(parts[2])
            errors = state[1] + (0 if state[0] == want else 1)
            first = state[2] or ("" if state[0] == want else "got %d of %d" % (state[0], want))
            say("FLOOD %s %d %d %s" % (tag, state[0], errors, first or "-"))
            return True
        return False


def say(text):
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


def run_single(args):
    deadline = time.monotonic() + args.timeout
    try:
        conn = Conn(args, deadline)
    except Exception as err:
        say("END handshake:%s" % err)
        return
    say("READY %s" % conn.sock.version())

    def emit(line):
        if not conn.check_flood(line):
            say("LINE " + line.hex())

    stdin_open = True
    pending_in = b""
    poller = select.poll()
    while conn.end is None:
        left = deadline - time.monotonic()
        if left <= 0:
            conn.end = "timeout"
            break
        if not conn.paused and conn.sock.pending():
            conn.read_ready(emit)
            continue
        conn.flood_fill()
        poller = select.poll()
        if stdin_open:
            poller.register(0, select.POLLIN)
        mask = (0 if conn.paused else select.POLLIN) | (select.POLLOUT if conn.out else 0)
        if mask:
            poller.register(conn.fileno(), mask)
        wait = 0.005 if conn.flood and not conn.out else 1.0
        events = poller.poll(min(left, wait) * 1000)
        for fd, ev in events:
            if fd == 0:
                chunk = os.read(0, 65536)
                if not chunk:
                    stdin_open = False
                    continue
                pending_in += chunk
                while b"\n" in pending_in:
                    cmd, pending_in = pending_in.split(b"\n", 1)
                    result = command(conn, cmd.decode().strip())
                    if result:
                        say("END " + result)
                        return
            else:
                if ev & select.POLLOUT:
                    conn.write_ready()
                if ev & (select.POLLIN | select.POLLHUP | select.POLLERR) and not conn.paused:
                    conn.read_ready(emit)
        if conn.flood_pending and not conn.out:
            say("FLOODSENT " + conn.flood_pending)
            conn.flood_pending = None
    if conn.buf:
        say("PARTIAL " + bytes(conn.buf).hex())
    if conn.end == "clean":
        conn.answer()
    say("END " + conn.end)
    try:
        conn.sock.close()
    except OSError:
        pass


def command(conn, cmd):
    """Runs one stdin command; returns an END kind when the connection is gone."""
    word, _, rest = cmd.partition(" ")
    if word == "send":
        conn.out += bytes.fromhex(rest)
        conn.write_ready()
    elif word == "flood":
        fields = rest.split()
        tag, n, size = fields[0], int(fields[1]), int(fields[2])
        rate = float(fields[3]) if len(fields) > 3 else 0.0
        conn.flood = {"tag": tag, "n": n, "size": size, "rate": rate, "seq": 0, "bytes": 0,
                      "start": time.monotonic()}
        conn.flood_fill()
        conn.write_ready()
    elif word == "close":
        conn.write_ready()
        try:
            conn.sock.unwrap()
        except (ssl.SSLWantReadError, ssl.SSLWantWriteError):
            pass  # sent; the server's close_notify comes later
        except OSError as err:
            conn.end = "error:unwrap %s" % err
    elif word == "drop":
        conn.sock.close()
        return "dropped"
    elif word == "reset":
        conn.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        conn.sock.close()
        return "sent-reset"
    elif word == "pause":
        conn.paused = True
        say("PAUSED")
    elif word == "resume":
        conn.paused = False
    elif cmd:
        say("BADCMD " + cmd)
    return None


def run_many(args):
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    deadline = time.monotonic() + args.timeout
    conns = []
    failed = 0
    for _ in range(args.many):
        try:
            conns.append(Conn(args, deadline))
        except Exception as err:
            failed += 1
            sys.stderr.write("handshake failed: %s\n" % err)
    say("READY %d" % len(conns))
    by_fd = {c.fileno(): c for c in conns}
    poller = select.poll()
    for c in conns:
        poller.register(c.fileno(), select.POLLIN)
    live = len(conns)

    def finish(c):
        nonlocal live
        live -= 1
        poller.unregister(c.fileno())
        if c.end == "clean":
            c.answer()
        try:
            c.sock.close()
        except OSError:
            pass

    while live:
        left = deadline - time.monotonic()
        if left <= 0:
            break
        busy = [c for c in conns if c.end is None and c.sock.pending()]
        if not busy:
            events = poller.poll(min(left, 1.0) * 1000)
            busy = [by_fd[fd] for fd, _ in events]
        for c in busy:
            if c.end is None:
                c.read_ready(c.lines.append)
                if c.end is not None:
                    finish(c)
    counts = {"clients": args.many, "handshake_failed": failed, "last_closing_shutdown": 0}
    for i, c in enumerate(conns):
        end = c.end or "timeout"
        counts[end] = counts.get(end, 0) + 1
        last = c.lines[-1] if c.lines else b""
        if last == b"* closing: shutdown" and not c.buf:
            counts["last_closing_shutdown"] += 1
        say("CLIENT %d %s %s" % (i, end, last.hex() or "-"))
    say("DONE " + json.dumps(counts))


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("host")
    p.add_argument("port", type=int)
    p.add_argument("--ca", required=True)
    p.add_argument("--servername", default="localhost")
    p.add_argument("--timeout", type=float, default=60.0, help="overall deadline in seconds")
    p.add_argument("--rcvbuf", type=int, default=0, help="SO_RCVBUF before connect (a small window)")
    p.add_argument("--no-answer", action="store_true", help="do not answer the server's close_notify")
    p.add_argument("--many", type=int, default=0)
    args = p.parse_args()
    if args.many:
        run_many(args)
    else:
        run_single(args)


if __name__ == "__main__":
    main()
