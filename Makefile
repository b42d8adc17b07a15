# Doorbell's entry points. `make run` starts the whole system on loopback;
# `make test` runs every module's tests. Tools (buf, protoc-gen-go,
# staticcheck) are pinned in tools/go.mod; Ory Hydra (an OIDC provider the
# e2e tests sign in through) and Mailpit (an SMTP server they deliver to) in
# tools/hydra and tools/mailpit; oauth2-proxy (what make bench compares the
# gateway with) in tools/oauth2-proxy. All are built into bin/ on first use.

GO      ?= go
BIN     := $(CURDIR)/bin
MODULES := proto platform services/auth-gateway services/mail-worker devstack e2e bench
# Modules whose tests run with the race detector; e2e builds and runs real
# binaries and is slow enough without it. bench's tests are its parts' unit
# tests: the benchmark itself only runs with make bench.
RACE_MODULES := proto platform services/auth-gateway services/mail-worker devstack bench
TOOLS   := $(BIN)/buf $(BIN)/protoc-gen-go $(BIN)/staticcheck
GOTEST_FLAGS ?= -count=1 -timeout=15m

.PHONY: all run build test test-unit test-e2e bench bench-micro proto proto-check lint tools clean

all: build

## run: start NATS, the dev IdP, the dev inbox and both services on loopback
run: build
	$(BIN)/devstack -gateway $(BIN)/auth-gateway -worker $(BIN)/mail-worker

## build: build the service binaries and the devstack into bin/
build:
	$(GO) build -o $(BIN)/auth-gateway ./services/auth-gateway
	$(GO) build -o $(BIN)/mail-worker ./services/mail-worker
	$(GO) build -o $(BIN)/devstack ./devstack

## test: unit and integration tests of every module, then the end-to-end tests
test: test-unit test-e2e

test-unit:
	@set -e; for m in $(RACE_MODULES); do \
		echo "==> go test -race ./$$m/..."; \
		(cd $$m && $(GO) test -race $(GOTEST_FLAGS) ./...); \
	done

test-e2e: $(BIN)/hydra $(BIN)/mailpit
	@echo "==> go test ./e2e/..."
	cd e2e && DOORBELL_HYDRA=$(BIN)/hydra DOORBELL_MAILPIT=$(BIN)/mailpit $(GO) test $(GOTEST_FLAGS) ./...

## bench: the whole path measured end to end in about 3 minutes: the real
## binaries on loopback, a table, and the same figures as JSON in
## bench/results/ (numbers, never pass/fail). BENCH_FLAGS="-h" lists the knobs.
bench: build $(BIN)/oauth2-proxy
	$(GO) build -o $(BIN)/bench ./bench
	$(BIN)/bench -gateway $(BIN)/auth-gateway -worker $(BIN)/mail-worker \
		-oauth2-proxy $(BIN)/oauth2-proxy -out bench/results $(BENCH_FLAGS)

## bench-micro: the Go benchmarks of every module (go test -bench)
bench-micro:
	@set -e; for m in $(MODULES); do \
		(cd $$m && $(GO) test -run '^$$' -bench . -benchmem ./...); \
	done

## proto: regenerate the Go code of the event contract (committed)
proto: $(BIN)/buf $(BIN)/protoc-gen-go
	cd proto && PATH="$(BIN):$$PATH" $(BIN)/buf lint
	cd proto && PATH="$(BIN):$$PATH" $(BIN)/buf generate

## proto-check: fail when the committed generated code is stale
proto-check: proto
	git diff --exit-code -- proto/ || { echo "proto/: generated code is stale; run make proto and commit"; exit 1; }

## lint: gofmt, go vet and staticcheck over every module
lint: $(BIN)/staticcheck
	@out=$$(gofmt -l $(MODULES)); if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi
	@set -e; for m in $(MODULES); do \
		echo "==> vet + staticcheck ./$$m/..."; \
		(cd $$m && $(GO) vet ./... && $(BIN)/staticcheck ./...); \
	done

tools: $(TOOLS) $(BIN)/hydra $(BIN)/mailpit

$(BIN)/buf $(BIN)/protoc-gen-go $(BIN)/staticcheck: tools/go.mod tools/go.sum
	GOWORK=off $(GO) build -C tools -o $(BIN)/ \
		github.com/bufbuild/buf/cmd/buf \
		google.golang.org/protobuf/cmd/protoc-gen-go \
		honnef.co/go/tools/cmd/staticcheck

# SQLite (cgo) is Hydra's in-memory store: DSN=memory.
$(BIN)/hydra: tools/hydra/go.mod tools/hydra/go.sum
	GOWORK=off $(GO) build -C tools/hydra -tags sqlite,sqlite_omit_load_extension -o $(BIN)/hydra github.com/ory/hydra/v2

$(BIN)/mailpit: tools/mailpit/go.mod tools/mailpit/go.sum
	GOWORK=off $(GO) build -C tools/mailpit -o $(BIN)/mailpit github.com/axllent/mailpit

$(BIN)/oauth2-proxy: tools/oauth2-proxy/go.mod tools/oauth2-proxy/go.sum
	GOWORK=off $(GO) build -C tools/oauth2-proxy -o $(BIN)/oauth2-proxy github.com/oauth2-proxy/oauth2-proxy/v7

clean:
	rm -rf $(BIN) .devstack
