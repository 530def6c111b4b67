# hybrid — make run (demo), make test (everything CI runs), make bench.
GO      ?= go
BIN     := bin/hybrid
VERSION ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
LDFLAGS := -X github.com/hybridconn/hybrid/internal/buildinfo.Version=$(VERSION)

.PHONY: all build run test unit fuzz bench vet clean

all: build

build:
	$(GO) build -ldflags "$(LDFLAGS)" -o $(BIN) ./cmd/hybrid

# The demo: relay, agent and proxy from the embedded hybrid.yaml, plus a small
# HTTP resource on 127.0.0.1:8081 that the agent publishes as "demo".
run: build
	@$(GO) build -o bin/demo-resource ./examples/demo-resource
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
test:
	$(GO) vet ./...
	$(GO) test -race -count=1 -timeout 20m ./...

unit:
	$(GO) test -race -count=1 $$($(GO) list ./... | grep -v /integration)

# Fuzz each decoder of untrusted bytes for FUZZTIME each.
FUZZTIME ?= 30s
fuzz:
	$(GO) test ./internal/wire -run '^$$' -fuzz FuzzRead -fuzztime $(FUZZTIME)
	$(GO) test ./internal/relayclient -run '^$$' -fuzz FuzzAcceptNotice -fuzztime $(FUZZTIME)
	$(GO) test ./internal/sas -run '^$$' -fuzz FuzzParseToken -fuzztime $(FUZZTIME)
	$(GO) test ./internal/endpoint -run '^$$' -fuzz FuzzParse -fuzztime $(FUZZTIME)
	$(GO) test ./rules -run '^$$' -fuzz FuzzParse -fuzztime $(FUZZTIME)
	$(GO) test ./proxy -run '^$$' -fuzz FuzzMatchSocks -fuzztime $(FUZZTIME)
	$(GO) test ./proxy -run '^$$' -fuzz FuzzEditHosts -fuzztime $(FUZZTIME)

# Throughput and latency through the tunnel as ratios against direct loopback.
bench:
	HYBRID_BENCH=1 $(GO) test -count=1 -run '^TestBench' -v -timeout 10m ./integration | grep -v '^=== RUN'

clean:
	rm -rf bin
