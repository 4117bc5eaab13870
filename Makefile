# The two commands: `make demo` and `make test`. Both install what is missing
# (Debian packages, as root) first.

CARGO ?= cargo
LAB_DIR ?= $(CURDIR)/.lab-demo

.PHONY: demo test deps lint build unit chaos-long bench-topology clean-lab

deps:
	@scripts/install-deps.sh

build: deps
	$(CARGO) build --workspace --bins

lint: deps
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

# The whole suite: unit tests, property tests, and end-to-end tests against
# real etcd and Postgres started by the lab. The long chaos profile is behind
# EZONE_CHAOS_LONG=1 (`make chaos-long`).
test: deps lint build
	@if $(CARGO) nextest --version >/dev/null 2>&1; then \
	  $(CARGO) nextest run --workspace --no-fail-fast; \
	else \
	  $(CARGO) test --workspace --no-fail-fast; \
	fi

chaos-long: deps build
	EZONE_CHAOS_LONG=1 $(CARGO) test --workspace --no-fail-fast

# For now the demo brings the lab up (etcd, one Postgres per site, the WAN
# fault proxy), shows the topology, and takes it down. The full demo (order
# traffic through routers, switchovers, verification report) comes with the
# failover work.
demo: build
	@scripts/demo.sh "$(LAB_DIR)"

bench-topology: build
	$(CARGO) run --release -p ezone -- bench topology

clean-lab:
	-target/debug/ezone lab down --dir "$(LAB_DIR)"
