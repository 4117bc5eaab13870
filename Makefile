# The two commands: `make demo` and `make test`. Both install what is missing
# (Debian packages, as root) first.

CARGO ?= cargo
# Failpoints (FAILPOINTS=...) compiled in: the end-to-end tests and the chaos
# suite need them. A release build (`cargo build --release`) has none.
FEATURES ?= --features ezone/failpoints
LAB_DIR ?= $(CURDIR)/.lab-demo
# Where cargo puts the build (CARGO_TARGET_DIR when set, as cargo does).
TARGET_DIR := $(or $(CARGO_TARGET_DIR),target)
EZONE := $(TARGET_DIR)/debug/ezone

.PHONY: demo test deps lint build unit chaos-long fuzz-long bench-topology clean-lab lab-demo

deps:
	@scripts/install-deps.sh

build: deps
	$(CARGO) build --workspace --bins $(FEATURES)

lint: deps
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets $(FEATURES) -- -D warnings

# The whole suite: unit tests, property tests, and end-to-end tests against
# real etcd and Postgres started by the lab, and the quick chaos profile.
# The long chaos profile is `make chaos-long`.
test: deps lint build
	@if $(CARGO) nextest --version >/dev/null 2>&1; then \
	  $(CARGO) nextest run --workspace --no-fail-fast $(FEATURES); \
	else \
	  $(CARGO) test --workspace --no-fail-fast $(FEATURES); \
	fi

# Many seeds, longer runs, one `ezone chaos run` each, and a summary of the
# verdicts (seeds, fault kinds covered, faults injected, writes acknowledged,
# every violation with its replay line) in target/chaos-long/summary.txt.
# CHAOS_ARGS passes options (e.g. `--seeds 1-20 --duration 60s`).
CHAOS_ARGS ?= --seeds 1-100 --duration 120s
chaos-long: deps build
	EZONE_CHAOS_LONG=1 $(CARGO) test -p ezone-tests --test failover $(FEATURES)
	$(EZONE) chaos sweep --report $(TARGET_DIR)/chaos-long $(CHAOS_ARGS)

# The router's HTTP/1 parsers against hyper's on many more generated and
# mutated messages than `make test` runs (512 per property there).
# FUZZ_CASES sets how many.
FUZZ_CASES ?= 50000
fuzz-long: deps
	EZONE_FUZZ_CASES=$(FUZZ_CASES) $(CARGO) test --release -p ezone-router --test h1_differential -- --nocapture

# The whole system on this machine (etcd, two Postgres sites with the fence,
# order services, routers, replicators, 30 ms WAN between the sites), order
# traffic with a live line, planned switchovers beijing -> shanghai and
# back, and a verification report. DEMO_ARGS passes options (e.g.
# `--rounds 3 --rate 300 --keep`).
demo: build
	$(EZONE) demo $(DEMO_ARGS)

bench-topology: build
	$(CARGO) run --release -p ezone -- bench topology

clean-lab:
	-$(EZONE) lab down --dir "$(LAB_DIR)"

# The lab alone (etcd, Postgres per site, WAN proxy), left running for manual work.
lab-demo: build
	@scripts/install-deps.sh --lab-demo
	@scripts/demo.sh "$(LAB_DIR)"
