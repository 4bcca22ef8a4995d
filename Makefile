# tlsrelay developer targets (DESIGN.md section 6).

BIN := target/release/tlsrelay
LISTEN ?= 127.0.0.1:7443
UPSTREAM ?=
PREFIX ?= /usr/local

.PHONY: build certs run s_client test deps install clean

build:
	cargo build --release --locked

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

s_client:
	openssl s_client -quiet -CAfile certs/ca.crt -connect $(LISTEN)

test: deps
	cargo test --locked

deps:
	bash scripts/install-test-deps.sh

install: build
	install -d $(DESTDIR)$(PREFIX)/bin
	install -m 0755 $(BIN) $(DESTDIR)$(PREFIX)/bin/tlsrelay

clean:
	cargo clean
	rm -f certs/*.crt certs/*.key
