# Slipway: `make demo` runs the platform, `make test` runs every test. Both install what they need.
SHELL := /bin/bash
export PATH := /opt/swift/usr/bin:$(PATH)
DATA_DIR ?= ./.slipway
CONFIG ?= debug

.PHONY: all build demo down test test-swift test-fuzz-replay test-interop fuzz check-generated generate bench bench-builder bench-pipeline bench-cluster bench-push bench-isolation chaos clean

all: build

build:
	scripts/install-deps.sh build
	swift build -c $(CONFIG)

## The main job: `slipway up` (registry, the seven services on 127.0.0.1:7000-7006, nginx, the local CA;
## data in $(DATA_DIR)), then a project, environment and service for examples/hello with a git
## webhook, a git push, and the app's HTTPS URL once it serves (scripts/demo.py).
demo: build
	scripts/install-deps.sh demo >/dev/null
	python3 scripts/demo.py $(DATA_DIR) .build/$(CONFIG)

## Stops what `make demo` started (slipway down).
down:
	.build/$(CONFIG)/slipway down --data-dir $(DATA_DIR)

## Every test: generated code in sync, Swift unit/integration tests, grpcio interop and robustness suites.
test:
	scripts/install-deps.sh test
	$(MAKE) check-generated
	swift build --build-tests
	$(MAKE) test-swift test-fuzz-replay test-interop

test-swift:
	swift test --skip-build

## The fuzz targets' seed corpus (and the inputs of every crash fixed) through each target, unsanitized.
FUZZ_TARGETS ?= grpc-framing http2-server protobuf webhooks nginx-config kubernetes-status dns-answer
test-fuzz-replay:
	for target in $(FUZZ_TARGETS); do .build/debug/slipway-fuzz $$target Tests/Fuzz/corpus/$$target || exit 1; done

## libFuzzer on every target (FUZZ_SECONDS each, default 60; FUZZ_TARGETS to choose): scripts/fuzz.sh.
fuzz:
	scripts/install-deps.sh test >/dev/null
	scripts/fuzz.sh

## Chaos (issue 18): deployments while services are kill -9'd, the disk fills and the registry stops;
## then the invariants (scripts/chaos.py). CHAOS_SECONDS (default 600) of faults.
CHAOS_SECONDS ?= 600
chaos: build
	scripts/install-deps.sh test >/dev/null
	python3 scripts/chaos.py --bin-dir .build/$(CONFIG) --seconds $(CHAOS_SECONDS)

test-interop:
	SLIPWAY_BIN_DIR=.build/debug python3 -m pytest -q Tests/interop

check-generated:
	SCRATCH=.build scripts/generate-protos.sh --check

## Regenerates the protobuf-c and Swift code from protos/.
generate:
	scripts/generate-protos.sh

## Builder benchmark: cold build, rebuild after a one-line change, skip, cancel (see BENCHMARKS.md).
bench-builder:
	swift build -c release --product slipway-builder
	swift build -c release --product slipway-logs
	python3 scripts/bench-builder.py .build/release

## Control-plane benchmark: 100 environments x 10 queued deployments, collaborators simulated (see BENCHMARKS.md).
bench-pipeline:
	swift build -c release --product slipway-pipeline
	swift build -c release --product slipway-logs
	python3 scripts/bench-pipeline.py .build/release

## Cluster benchmark: Deploy call to ready instances of examples/hello under runc (see BENCHMARKS.md).
bench-cluster:
	swift build -c release --product slipway-cluster
	python3 scripts/bench-cluster.py .build/release

## Isolation: requests/s through nginx to an instance over its veth vs over loopback (see BENCHMARKS.md).
bench-isolation:
	swift build -c release --product slipway-cluster
	python3 scripts/bench-isolation.py .build/release 3

## Push-to-live: a commit to examples/hello → the new page over HTTPS through nginx (every real service).
bench-push:
	swift build -c release
	python3 scripts/bench-push-to-live.py .build/release 10

## RPC benchmark against the grpc-swift-2 anchor (see BENCHMARKS.md).
bench:
	scripts/bench-rpc.sh

clean:
	rm -rf .build .build-gen
