# polystream: every target installs what it needs (scripts/install-tools.sh).
SHELL := /bin/bash
PYTHON ?= /usr/bin/python3
export PATH := $(shell go env GOPATH)/bin:$(PATH)

.PHONY: all build proto proto-check tools test test-go test-python bench conformance clean

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
	go test -race -count=1 ./go/... ./scripts/...

test-python: build
	cd python && POLYSTREAM_GO_BIN=$(CURDIR)/bin/polystream $(PYTHON) -m pytest -q tests

bench:
	go test -run '^$$' -bench . -benchmem ./go/...

clean:
	rm -rf bin conformance/results

# The main job: images, then every client against every server (conformance/).
conformance:
	bash scripts/conformance.sh
