#!/usr/bin/env python3
"""A TLS server for the `tlsrelay connect` tests, independent of OpenSSL's Rust bindings.

It serves --connections N clients one after another, then exits. For the i-th connection
it uses the i-th --send / --read / --end value (the last one given repeats):

  --send TEXT   sent right after the handshake ("\\n" in TEXT is a newline)
  --read MODE   none  do not read
                wait  read (and keep) what the client sends until its stream ends
                echo  the same, sending every byte back
  --pause SECS  sleep before ending (e.g. to let a connection live a given time)
  --end KIND    clean     close_notify (then wait for the client's, reported as "answered")
                truncate  TCP FIN without close_notify
                reset     TCP RST (SO_LINGER 0)
                silent    no close_notify ever: hold the socket until the client closes TCP

The listening socket is closed as soon as the last connection is accepted, so a client that
retries afterwards is refused rather than left in the backlog.

stdout, one JSON object a line, times from time.monotonic():
  {"event": "listening", "port": P}
  {"event": "accept", "conn": i, "t": ..., "sni": NAME|null}
  {"event": "end", "conn": i, "t": ..., "kind": KIND, "client_end": clean|truncated|reset|timeout|null,
   "received": TEXT, "answered": true|false|null}

With suppress_ragged_eofs=False, recv() returns b"" only for a real close_notify; a TCP EOF
without one raises SSLEOFError (DESIGN §3 facts), so "client_end" cannot mistake one for the other.
"""

import argparse
import json
import socket
import ssl
import struct
import sys
import time


SNI = []  # the server name the current client sent, if any


def say(**fields):
    print(json.dumps(fields), flush=True)


def pick(values, i, default):
    if not values:
        return default
    return values[min(i, len(values) - 1)]


def read_client(tls, echo):
    """Reads until the client's stream ends; returns (how it ended, bytes received)."""
    received = bytearray()
    while True:
        try:
            data = tls.recv(65536)
        except ssl.SSLEOFError:
            return "truncated", received
        except (ConnectionResetError, BrokenPipeError):
            return "reset", received
        except socket.timeout:
            return "timeout", received
        except ssl.SSLError as err:
            return "error:%s" % (err.reason or err), received
        if not data:
            return "clean", received
        received += data
        if echo:
            tls.sendall(data)


def drain_raw(sock, seconds):
    """Reads raw bytes until the peer closes TCP or `seconds` pass."""
    sock.settimeout(seconds)
    try:
        while socket.socket.recv(sock, 65536):  # the raw socket, below any TLS
            pass
    except OSError:
        pass


def finish(tls, kind, timeout):
    """Ends the connection as `kind` says; returns whether the client answered our close_notify."""
    if kind == "clean":
        try:
            tls.unwrap()  # sends close_notify, then waits for the client's
            return True
        except (OSError, ssl.SSLError):
            return False
    if kind == "reset":
        tls.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        tls.close()
        return None
    if kind == "truncate":
        tls.shutdown(socket.SHUT_WR)  # SSLSocket.shutdown drops TLS: a bare FIN
        drain_raw(tls, timeout)
        return None
    drain_raw(tls, timeout)  # silent
    return None


def serve(conn, i, accepted_at, ctx, args):
    conn.settimeout(args.timeout)
    SNI.clear()
    try:
        tls = ctx.wrap_socket(conn, server_side=True, suppress_ragged_eofs=False)
    except (OSError, ssl.SSLError) as err:
        say(event="handshake_failed", conn=i, reason=str(err))
        conn.close()
        return
    say(event="accept", conn=i, t=accepted_at, sni=SNI[0] if SNI else None)
    send = pick(args.send, i, "")
    if send:
        tls.sendall(send.replace("\\n", "\n").encode())
    client_end, received = None, b""
    read = pick(args.read, i, "none")
    if read != "none":
        client_end, received = read_client(tls, echo=read == "echo")
    pause = pick(args.pause, i, 0)
    if pause:
        time.sleep(pause)
    kind = pick(args.end, i, "clean")
    ended_at = time.monotonic()
    answered = finish(tls, kind, args.timeout)
    say(event="end", conn=i, t=ended_at, kind=kind, client_end=client_end,
        received=bytes(received).decode("latin-1"), answered=answered)
    try:
        tls.close()
    except OSError:
        pass


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--cert", required=True)
    p.add_argument("--key", required=True)
    p.add_argument("--client-ca", help="require a client certificate signed by this CA")
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--tls", choices=["1.2", "1.3", "any"], default="any")
    p.add_argument("--connections", type=int, default=1)
    p.add_argument("--send", action="append")
    p.add_argument("--read", action="append", choices=["none", "wait", "echo"])
    p.add_argument("--pause", type=float, action="append")
    p.add_argument("--end", action="append", choices=["clean", "truncate", "reset", "silent"])
    p.add_argument("--timeout", type=float, default=20.0)
    args = p.parse_args()

    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(args.cert, args.key)
    if args.tls != "any":
        version = ssl.TLSVersion.TLSv1_2 if args.tls == "1.2" else ssl.TLSVersion.TLSv1_3
        ctx.minimum_version = ctx.maximum_version = version
    ctx.sni_callback = lambda _obj, name, _ctx: SNI.append(name)
    if args.client_ca:
        ctx.load_verify_locations(args.client_ca)
        ctx.verify_mode = ssl.CERT_REQUIRED

    listener = socket.create_server(("127.0.0.1", args.port))  # SO_REUSEADDR: a restart may reuse the port
    listener.settimeout(args.timeout)  # a test that never connects must not leave us behind
    say(event="listening", port=listener.getsockname()[1])
    for i in range(args.connections):
        conn, _ = listener.accept()
        accepted_at = time.monotonic()
        if i == args.connections - 1:
            listener.close()
        serve(conn, i, accepted_at, ctx, args)


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:
        sys.exit(1)
