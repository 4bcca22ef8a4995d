#!/usr/bin/env bash
# Installs, with apt-get, only the tools the build (`build`) or the test suite (default) needs
# that are not there yet.
set -euo pipefail

if ! command -v cargo >/dev/null 2>&1; then
    echo "cargo not found: install Rust with rustup (https://rustup.rs), then rerun" >&2
    exit 1
fi

missing=()
need() { # need COMMAND PACKAGE: queue PACKAGE when COMMAND is absent
    command -v "$1" >/dev/null 2>&1 || missing+=("$2")
}
# `build` (what `make run` needs): a C toolchain and OpenSSL's headers; the default adds the
# real peers and tools the tests drive.
need cc gcc
if [ "${1:-test}" != build ]; then
    need gnutls-cli gnutls-bin
    need openssl openssl
    need python3 python3
    need prlimit util-linux
    need promtool prometheus
    need setcap libcap2-bin
    need strace strace # the ignored stop-race tests of close_semantics.rs
    # Clients whose APIs hide a bare reset or FIN (tests/unclean_end.rs).
    need node nodejs
    need go golang-go
    # Real PROXY protocol consumers and the balancer in front (tests/proxy_*.rs).
    need nginx nginx
    need haproxy haproxy
    # tests/systemd.rs: the package under a real systemd in a container.
    need systemd-nspawn systemd-container
    need systemd-socket-activate systemd
    need ps procps
fi
# The openssl crate builds against the system OpenSSL, found through pkg-config.
if ! command -v pkg-config >/dev/null 2>&1; then
    missing+=(pkg-config libssl-dev)
elif ! pkg-config --exists openssl; then
    missing+=(libssl-dev)
fi

if [ ${#missing[@]} -eq 0 ]; then
    exit 0
fi
if [ "$(id -u)" -ne 0 ] || ! command -v apt-get >/dev/null 2>&1; then
    echo "missing test dependencies; install them (as root): apt-get install ${missing[*]}" >&2
    exit 1
fi
echo "installing test dependencies: ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
apt-get update
apt-get install -y --no-install-recommends "${missing[@]}"
