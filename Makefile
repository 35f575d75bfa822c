# osvc — see README.md. Targets: build, generate, lint, breaking, test, integration, bench, demo.
GO      ?= go
BUF     := $(GO) tool -modfile=tools/go.mod buf
BIN     := bin
GOTEST  := $(GO) test -race -shuffle=on -count=1 -timeout 20m

.PHONY: all deps build generate check-generated lint breaking test unit integration bench demo clean

all: build

deps:
	@deploy/install-deps.sh

build:
	$(GO) build -o $(BIN)/ ./cmd/...

# gen/ is committed; this rebuilds it from proto/ (the workspace of buf.yaml)
# with the pinned buf and plugins.
generate:
	rm -rf gen/osvc
	$(BUF) generate
	$(BUF) build proto/api -o server/apidesc/api.binpb

# Fails when gen/ differs from what proto/ generates.
check-generated: generate
	@git diff --exit-code -- gen/ server/apidesc/api.binpb || { echo "gen/ or server/apidesc/api.binpb is stale: run 'make generate' and commit" >&2; exit 1; }
	@test -z "$$(git status --porcelain -- gen/)" || { git status --porcelain -- gen/; echo "gen/ has files proto/ does not generate: run 'make generate' and commit" >&2; exit 1; }

lint:
	$(BUF) lint
	$(GO) vet ./...
	GOOS=windows GOARCH=amd64 $(GO) build ./...
	GOOS=windows GOARCH=amd64 $(GO) vet ./...

# buf breaking: the API (FILE rules) and the store's records (WIRE) against
# the last release tag, or the previous commit until there is one; a clone
# too shallow for either is skipped with a message (see .ci/breaking).
breaking:
	GO=$(GO) .ci/breaking

# The whole suite, unit and integration, with the race detector.
test: deps
	$(GOTEST) ./...

unit: deps
	$(GOTEST) $$($(GO) list ./... | grep -v /integration)

integration: deps
	$(GOTEST) ./integration/...

# Each prints a ratio against the raw floor measured in the same run (bare
# etcd; for logs, the stored chunks written straight to etcd; for import-memory, the server's own idle RSS; for pipeline, the same
# wimlib-imagex commands by hand; for shrink, the image before; for LZX, MSZIP's
# inflating of the same data; for objstore, the bare S3 client on the same
# server; for distribute, a bare gRPC stream of the bytes the delta fetch sent).
bench:
	$(GO) test -run '^$$' -bench LZXDecompression -benchtime 20x ./pkg/cab/
	$(GO) run ./cmd/osvc-bench -run startup
	$(GO) run ./cmd/osvc-bench -run lease
	$(GO) run ./cmd/osvc-bench -run report
	$(GO) run ./cmd/osvc-bench -run logs
	$(GO) run ./cmd/osvc-bench -run catalog
	$(GO) run ./cmd/osvc-bench -run import-memory
	$(GO) run ./cmd/osvc-bench -run pipeline
	$(GO) run ./cmd/osvc-bench -run shrink
	$(GO) run ./cmd/osvc-bench -run objstore
	$(GO) run ./cmd/osvc-bench -run distribute

demo: deps build
	deploy/demo.sh

clean:
	rm -rf $(BIN) demo-data
