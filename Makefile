# teddyflow — the two commands a newcomer needs:
#   make demo   set up, start a local broker, a simulated fleet and the processor; show replies and metrics
#   make test   set up, start what the tests need, run every test
SHELL := /bin/bash
CARGO ?= cargo
BIN := target/release/teddyflow

.PHONY: setup build demo test fuzz bench-asr bench-e2e broker broker-stop fmt clean-assets

setup:
	bash scripts/setup.sh

build: setup
	$(CARGO) build --release

demo: build
	bash scripts/demo.sh

# Unit tests, then integration tests against a real Tansu broker and the real models.
# The test harness starts and stops its own brokers (one per test, on free loopback ports).
# The second line runs each criterion benchmark once, as a smoke test (figures: `cargo bench`).
test: setup
	$(CARGO) test --release --workspace --lib --bins --tests --examples --no-fail-fast -- --test-threads=2
	$(CARGO) test --release --benches --no-fail-fast

# The long fuzzing run of everything that parses client input (the bounded run is part of
# `make test`): FUZZ_SECONDS per target (default 300), FUZZ_SEED to repeat a run; failing
# inputs land in fuzz/crashes/. See dataflow/tests/fuzz.rs.
FUZZ_SECONDS ?= 300
fuzz:
	FUZZ_SECONDS=$(FUZZ_SECONDS) $(CARGO) test --release -p teddyflow-dataflow --test fuzz -- --ignored --nocapture

bench-asr: build
	$(BIN) bench asr /usr/share/pocketsphinx/test/data/librivox --model tiny.en

# The whole pipeline through a real broker (a local one is started if none is running);
# e.g. `make bench-e2e E2E="--workers 1,2"` for the scaling ratio. See docs/performance.md.
E2E ?=
bench-e2e: build
	$(BIN) bench e2e $(E2E)

broker: setup
	bash scripts/broker.sh start

broker-stop:
	bash scripts/broker.sh stop

fmt:
	$(CARGO) fmt --all
