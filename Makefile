# hybrid — make run (demo), make test (everything CI runs), make bench,
# make dist (release archives).
GO      ?= go
BIN     ?= bin/hybrid

# Version and commit come from git here, not from Go's VCS stamping (which
# -buildvcs=false and builds outside a checkout turn off); override with
# `make VERSION=v1.2.3`. Each is computed once.
VERSION ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
COMMIT  ?= $(shell git rev-parse HEAD 2>/dev/null || echo unknown)
VERSION := $(VERSION)
COMMIT  := $(COMMIT)
BUILDINFO := github.com/hybridconn/hybrid/internal/buildinfo
LDFLAGS := -X $(BUILDINFO).Version=$(VERSION) -X $(BUILDINFO).Commit=$(COMMIT)

# make dist: one archive per release target, in $(DIST).
PLATFORMS ?= linux/amd64 linux/arm64 darwin/arm64 windows/amd64
DIST      ?= dist
# Archive entries carry the commit's time, so the archives are reproducible.
SOURCE_DATE_EPOCH ?= $(shell git log -1 --format=%ct 2>/dev/null || echo 0)

.PHONY: all build run test unit fuzz bench examples dist docker deploy-check clean

all: build

build:
	$(GO) build -ldflags "$(LDFLAGS)" -o $(BIN) ./cmd/hybrid

# Release archives: a static binary (CGO_ENABLED=0) per target in
# PLATFORMS with README.md, docs/configuration.md and the demo hybrid.yaml;
# .zip for windows, .tar.gz for the others; and SHA256SUMS.
dist:
	rm -rf $(DIST)
	@set -e; for p in $(PLATFORMS); do \
	  os=$${p%/*}; arch=$${p#*/}; ext=; \
	  if [ "$$os" = windows ]; then ext=.exe; fi; \
	  name=hybrid_$(VERSION)_$${os}_$${arch}; \
	  echo "dist: $$name (GOOS=$$os GOARCH=$$arch CGO_ENABLED=0)"; \
	  mkdir -p $(DIST)/$$name/docs; \
	  CGO_ENABLED=0 GOOS=$$os GOARCH=$$arch $(GO) build -trimpath -ldflags "$(LDFLAGS) -s -w" \
	    -o $(DIST)/$$name/hybrid$$ext ./cmd/hybrid; \
	  cp README.md hybrid.yaml $(DIST)/$$name/; \
	  cp docs/configuration.md $(DIST)/$$name/docs/; \
	done
	$(GO) run ./internal/tools/dist -mtime $(SOURCE_DATE_EPOCH) $(DIST)

# The demo: relay, agent and proxy from the embedded hybrid.yaml, plus a small
# HTTP resource on 127.0.0.1:8081 that the agent publishes as "demo". Its
# ports are fixed (hybrid.yaml): it stops at once, naming them, if one is
# taken.
DEMO_PORTS := 127.0.0.1:5671,127.0.0.1:9352,127.0.0.1:8080,127.0.0.1:8081,127.0.0.2:8081,127.0.0.2:5432
run: build
	@$(GO) build -o bin/demo-resource ./examples/demo-resource
	@bin/demo-resource -check $(DEMO_PORTS) || { \
	  echo; echo "make run: the demo needs these fixed ports (hybrid.yaml): $(DEMO_PORTS)"; \
	  echo "make run: free them (another make run or hybrid up?) and try again"; exit 1; }
	@echo
	@echo "  The tunnel is coming up. In another terminal, type:"
	@echo
	@echo "      curl http://127.0.0.2:8081/hello"
	@echo
	@echo "  127.0.0.2:8081 is the proxy (the app's side); the request crosses"
	@echo "  proxy -> relay -> agent and reaches the demo resource on 127.0.0.1:8081."
	@echo "  Ctrl-C stops everything."
	@echo
	@bin/demo-resource -listen 127.0.0.1:8081 & pid=$$!; \
	  trap 'kill $$pid 2>/dev/null' EXIT INT TERM; \
	  $(BIN) up --config hybrid.yaml

# Every test: unit, fuzz seeds, and end-to-end against the built binary with
# a real PostgreSQL (see integration/). This is what .ci/run calls.
# The tests run through internal/tools/testsum: the usual ok/FAIL lines, the
# output of each failed test, a line per skipped test, and a summary line of
# passed/failed/skipped; under CI=true a skip is a failure.
TESTSUM := GO=$(GO) $(GO) run ./internal/tools/testsum

test:
	$(GO) vet ./...
	$(TESTSUM) -race -count=1 -timeout 20m ./...

unit:
	$(TESTSUM) -race -count=1 $$($(GO) list ./... | grep -v /integration)

# The deployment files under deploy/, without a cluster: every Kubernetes
# manifest decoded strictly against the API types and checked against the
# others, each hybrid config in them run through `hybrid check` as its pod
# would see it, and the systemd units through systemd-analyze. Its own
# module (deploy/validate), so that the main one does not depend on k8s.io;
# .ci/run calls it after make test.
deploy-check: build
	$(GO) build -o bin/testsum ./internal/tools/testsum
	cd deploy/validate && $(GO) vet ./... && \
	  HYBRID_BIN=$(abspath $(BIN)) GO=$(GO) ../../bin/testsum -count=1 ./...

# The container image (Dockerfile), stamped like make build. Needs a Docker
# engine.
IMAGE ?= hybrid
docker:
	docker build -t $(IMAGE):$(VERSION) --build-arg VERSION=$(VERSION) --build-arg COMMIT=$(COMMIT) .

# Every example, one command each (examples/*/run.sh), one after the other
# (they use fixed ports); all run even when one fails, then the failures are
# named. .ci/run runs this after make test, so an example cannot rot.
examples:
	@failed=; for s in examples/*/run.sh; do \
	  echo; echo "==== $$s"; \
	  if bash "$$s"; then echo "==== $$s: ok"; else echo "==== $$s: FAILED"; failed="$$failed $$s"; fi; \
	done; \
	if [ -n "$$failed" ]; then echo; echo "make examples: failed:$$failed"; exit 1; fi; \
	echo; echo "make examples: all ok"

# Fuzz each decoder of untrusted bytes for FUZZTIME each.
FUZZTIME ?= 30s
fuzz:
	$(GO) test ./internal/wire -run '^$$' -fuzz FuzzRead -fuzztime $(FUZZTIME)
	$(GO) test ./internal/relayclient -run '^$$' -fuzz FuzzAcceptNotice -fuzztime $(FUZZTIME)
	$(GO) test ./internal/wsconn -run '^$$' -fuzz FuzzFrames -fuzztime $(FUZZTIME)
	$(GO) test ./relay -run '^$$' -fuzz FuzzResponse -fuzztime $(FUZZTIME)
	$(GO) test ./internal/sas -run '^$$' -fuzz FuzzParseToken -fuzztime $(FUZZTIME)
	$(GO) test ./internal/endpoint -run '^$$' -fuzz FuzzParse -fuzztime $(FUZZTIME)
	$(GO) test ./internal/mux -run '^$$' -fuzz FuzzServer -fuzztime $(FUZZTIME)
	$(GO) test ./rules -run '^$$' -fuzz FuzzParse -fuzztime $(FUZZTIME)
	$(GO) test ./proxy -run '^$$' -fuzz FuzzMatchSocks -fuzztime $(FUZZTIME)
	$(GO) test ./proxy -run '^$$' -fuzz FuzzEditHosts -fuzztime $(FUZZTIME)
	$(GO) test ./rules -run '^$$' -fuzz FuzzFindCulprit -fuzztime $(FUZZTIME)

# Issue 11's figures: direct loopback, native, native with TLS, WebSocket
# (plain and TLS), a stream forwarded across a fleet of two relays, and
# ssh -L, interleaved over rounds, as medians and ratios to direct with the
# targets marked PASS or MISS; plus Go benchmarks of the wire codec, SAS
# verification and the stream handshake. The relay, agent and proxy are the
# binary make build makes, as separate processes on loopback. BENCH=tiny is
# one small round, to show that it runs (.ci/run); BENCH_JSON=path names the
# figures file (default: bench.json in the temp dir). The bench is a test
# built with -tags bench and run as a binary, so that its report streams as
# it goes. docs/performance.md says what each figure is.
BENCH ?= full
bench: build
	$(GO) test -c -tags bench -o bin/bench.test ./integration
	cd integration && BENCH=$(BENCH) GO=$(GO) HYBRID_BIN=$(abspath $(BIN)) \
	  $(if $(BENCH_JSON),BENCH_JSON=$(abspath $(BENCH_JSON))) \
	  ../bin/bench.test -test.run '^TestBench$$' -test.count 1 -test.timeout 15m

clean:
	rm -rf bin $(DIST)
