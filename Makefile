# polystream: every target installs what it needs (scripts/install-tools.sh).
SHELL := /bin/bash
PYTHON ?= /usr/bin/python3
export PATH := $(shell go env GOPATH)/bin:$(PATH)

.PHONY: all build proto proto-check tools test test-go test-python bench conformance conformance-selftest clean

all: build

tools:
	bash scripts/install-tools.sh all

build:
	CGO_ENABLED=0 go build -o bin/polystream ./go/cmd/polystream

proto:
	bash scripts/gen-proto.sh

proto-check:
	bash scripts/check-proto.sh

# The README's test command: generated code, Go (race detector), Python,
# cross-language smoke tests and the docs' commands.
test: tools proto-check build test-go test-python

test-go:
	go vet ./...
	go test -race -count=1 ./go/... ./conformance/... ./scripts/...

test-python: build
	cd python && POLYSTREAM_GO_BIN=$(CURDIR)/bin/polystream $(PYTHON) -m pytest -q tests

# Benchmarks behind docs/performance.md (bounded; reports in bench-results/).
bench: build
	bash scripts/install-tools.sh python
	GOFLAGS=-mod=mod go install golang.org/x/perf/cmd/benchstat@latest
	mkdir -p bench-results
	go test -run '^$$' -bench . -benchmem -count 6 ./go/events/ | tee bench-results/go-bench.txt
	benchstat bench-results/go-bench.txt
	$(PYTHON) scripts/bench/python_streams.py --streams 5000
	bash scripts/bench/ghz.sh

clean:
	rm -rf bin conformance/results

# The main job: images, then every client against every server (conformance/).
conformance:
	bash scripts/conformance.sh

# The harness's self-test: each case in conformance/selftest.yaml must FAIL
# against a server started with the matching --fault.
conformance-selftest:
	CONFORMANCE_SELFTEST=1 bash scripts/conformance.sh
