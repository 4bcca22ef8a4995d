# tlsrelay developer targets (DESIGN.md section 6).

BIN := target/release/tlsrelay
LISTEN ?= 127.0.0.1:7443
UPSTREAM ?=
PREFIX ?= /usr/local

.PHONY: build build-deps certs run s_client test stress deps install uninstall docs deb clean

build: build-deps
	cargo build --release --locked

# A fresh Debian machine may lack OpenSSL's headers or a C compiler: install just those.
build-deps:
	bash scripts/install-test-deps.sh build

certs: build
	$(BIN) gen-cert --out certs

# A file target, so `make run` creates certificates only when none exist yet.
certs/server.crt:
	$(MAKE) certs

run: build certs/server.crt
ifeq ($(UPSTREAM),)
	@echo "starting the hub on $(LISTEN); forward mode: $(BIN) serve --upstream HOST:PORT (or make run UPSTREAM=HOST:PORT)"
	exec $(BIN) serve --listen $(LISTEN)
else
	exec $(BIN) serve --listen $(LISTEN) --upstream $(UPSTREAM)
endif

# -servername: s_client sends no SNI to an address and then prints "Can't use
# SSL_get_servername", which reads like an error; -verify_quiet keeps the check, not its chatter.
s_client:
	openssl s_client -quiet -verify_quiet -CAfile certs/ca.crt -servername localhost -connect $(LISTEN)

# The .deb first: tests/systemd.rs installs it under systemd in a container.
test: deps deb
	cargo test --locked

# Intermittent failures on demand (issue 15): the close-semantics, load, upgrade and hub suites
# run over and over side by side for STRESS_MINUTES; each failure is reported with its log
# (target/stress/), then the runs and failures of each suite. See scripts/stress.sh.
STRESS_MINUTES ?= 10
STRESS_SUITES ?= close_semantics load upgrade hub
stress: deps
	STRESS_MINUTES=$(STRESS_MINUTES) STRESS_SUITES="$(STRESS_SUITES)" bash scripts/stress.sh

deps:
	bash scripts/install-test-deps.sh

# Man pages and completions, generated from the clap definitions by the binary itself.
DOCS := target/docs
docs: build
	$(BIN) generate-docs --out $(DOCS)

# target/debian/tlsrelay_VERSION_ARCH.deb (packaging/, [package.metadata.deb] in Cargo.toml).
deb: docs
	command -v cargo-deb >/dev/null 2>&1 || cargo install cargo-deb --locked
	cargo deb --no-build --strip

# The package's files for hosts without dpkg: `make install` (PREFIX=/usr/local, DESTDIR for
# staging). The units' ExecStart names $(PREFIX)/bin/tlsrelay; /etc/default/tlsrelay is kept
# if present. Then, as root: systemd-sysusers; systemctl daemon-reload; tlsrelay gen-cert
# --out /etc/tlsrelay (or your own certificate); systemctl enable --now tlsrelay.
SYSCONFDIR ?= /etc
UNITDIR ?= $(PREFIX)/lib/systemd/system
SYSUSERSDIR ?= $(PREFIX)/lib/sysusers.d
MANDIR ?= $(PREFIX)/share/man/man1
UNITS := tlsrelay.service tlsrelay@.service tlsrelay.socket
install: docs
	install -d $(DESTDIR)$(PREFIX)/bin $(DESTDIR)$(UNITDIR) $(DESTDIR)$(SYSUSERSDIR) $(DESTDIR)$(MANDIR) \
		$(DESTDIR)$(SYSCONFDIR)/default $(DESTDIR)$(PREFIX)/share/bash-completion/completions \
		$(DESTDIR)$(PREFIX)/share/zsh/vendor-completions $(DESTDIR)$(PREFIX)/share/fish/vendor_completions.d
	install -m 0755 $(BIN) $(DESTDIR)$(PREFIX)/bin/tlsrelay
	for unit in $(UNITS); do \
		sed 's|/usr/bin/tlsrelay|$(PREFIX)/bin/tlsrelay|' packaging/systemd/$$unit > $(DESTDIR)$(UNITDIR)/$$unit; \
		chmod 0644 $(DESTDIR)$(UNITDIR)/$$unit; \
	done
	install -m 0644 packaging/systemd/tlsrelay.sysusers $(DESTDIR)$(SYSUSERSDIR)/tlsrelay.conf
	[ -e $(DESTDIR)$(SYSCONFDIR)/default/tlsrelay ] || \
		install -m 0644 packaging/default/tlsrelay $(DESTDIR)$(SYSCONFDIR)/default/tlsrelay
	install -m 0644 $(DOCS)/man/*.1 $(DESTDIR)$(MANDIR)/
	install -m 0644 $(DOCS)/completions/tlsrelay.bash $(DESTDIR)$(PREFIX)/share/bash-completion/completions/tlsrelay
	install -m 0644 $(DOCS)/completions/_tlsrelay $(DESTDIR)$(PREFIX)/share/zsh/vendor-completions/_tlsrelay
	install -m 0644 $(DOCS)/completions/tlsrelay.fish $(DESTDIR)$(PREFIX)/share/fish/vendor_completions.d/tlsrelay.fish

# Removes what `make install` put in place, except /etc/default/tlsrelay and /etc/tlsrelay.
uninstall:
	rm -f $(DESTDIR)$(PREFIX)/bin/tlsrelay $(DESTDIR)$(SYSUSERSDIR)/tlsrelay.conf
	for unit in $(UNITS); do rm -f $(DESTDIR)$(UNITDIR)/$$unit; done
	rm -f $(DESTDIR)$(MANDIR)/tlsrelay.1 $(DESTDIR)$(MANDIR)/tlsrelay-*.1
	rm -f $(DESTDIR)$(PREFIX)/share/bash-completion/completions/tlsrelay \
		$(DESTDIR)$(PREFIX)/share/zsh/vendor-completions/_tlsrelay \
		$(DESTDIR)$(PREFIX)/share/fish/vendor_completions.d/tlsrelay.fish

clean:
	cargo clean
	rm -f certs/*.crt certs/*.key

# Benchmarks (issue 7, BENCH.md): tlsrelay against stunnel, haproxy, nginx (stream) and socat
# in one run on 127.0.0.1; installs the anchors from Debian when missing (needs root).
# `bench` is the quick mode (about 3 minutes), `bench-full` the longer one (5,000 idle clients too).
.PHONY: bench bench-full

bench:
	cargo build --release --locked --bins
	python3 bench/bench.py --mode quick

bench-full:
	cargo build --release --locked --bins
	python3 bench/bench.py --mode full

# Hub fan-out benchmark (examples/hub_fanout.rs): one sender, N-1 readers, N = 10, 100, 1000.
# Burst: the sender sends as fast as the hub takes lines (throughput; the delay is queueing).
# Paced: the sender sends at a fixed rate well under that (the delay of a line in normal use).
.PHONY: bench-hub
bench-hub: build
	cargo build --release --locked --example hub_fanout
	target/release/examples/hub_fanout --clients 10 --lines 100000 --timeout 120
	target/release/examples/hub_fanout --clients 100 --lines 5000 --timeout 120
	target/release/examples/hub_fanout --clients 1000 --lines 200 --timeout 120
	target/release/examples/hub_fanout --clients 10 --lines 40000 --rate 20000 --timeout 120
	target/release/examples/hub_fanout --clients 100 --lines 1500 --rate 500 --timeout 120
	target/release/examples/hub_fanout --clients 1000 --lines 60 --rate 20 --timeout 120
