# Build, demo, test and benchmark entry points. Each target is a thin wrapper:
# the real work lives in scripts/ so it can be run and read on its own.

GO        ?= go
BIN       := bin/cairn
VERSION   := $(shell git describe --always --dirty 2>/dev/null || echo dev)
LDFLAGS   := -X main.version=$(VERSION)
BENCHTIME ?= 2s
FUZZTIME  ?= 20s
BENCH_PKGS := ./crypto ./chunk ./repo ./pack ./index ./snapshot

.PHONY: all build demo test vet fmt-check bench fuzz clean

all: build

# Always rebuilt: go's build cache makes an up-to-date build cheap.
build:
	$(GO) build -ldflags "$(LDFLAGS)" -o $(BIN) ./cmd/cairn

demo:
	scripts/demo.sh

test:
	scripts/install-test-deps.sh
	$(GO) vet ./...
	$(MAKE) --no-print-directory fmt-check
	# -count=1: tests/ runs the built binary, which go test does not see as
	# an input, so a cached result could hide a change in cmd/.
	TESTENV_BIN_DIR=$(CURDIR)/.cache/testbin $(GO) test -count=1 -timeout 20m ./...
	# A static build compresses in Go instead of through cgo: same format.
	CGO_ENABLED=0 $(GO) test -count=1 ./repo
	# The end-to-end suite once more, every repository a bucket on MinIO.
	CAIRN_TEST_BACKEND=s3 TESTENV_BIN_DIR=$(CURDIR)/.cache/testbin $(GO) test -count=1 -timeout 20m ./tests/

fmt-check:
	@unformatted=$$(gofmt -l $$(git ls-files -co --exclude-standard '*.go')); \
	if [ -n "$$unformatted" ]; then \
		echo "gofmt needed on:"; echo "$$unformatted"; exit 1; \
	fi

vet:
	$(GO) vet ./...

bench:
	$(GO) test -run XXX -bench . -benchmem -benchtime $(BENCHTIME) $(BENCH_PKGS)
	scripts/bench.sh

# Runs every FuzzXxx for FUZZTIME each; go test accepts one fuzz target per run.
fuzz:
	@set -e; for f in $$(git ls-files -co --exclude-standard '*_test.go'); do \
		for name in $$(sed -n 's/^func \(Fuzz[A-Za-z0-9_]*\)(.*/\1/p' $$f); do \
			echo "== $$name ($$(dirname $$f))"; \
			$(GO) test -run XXX -fuzz "^$$name\$$" -fuzztime $(FUZZTIME) ./$$(dirname $$f); \
		done; \
	done

clean:
	rm -rf bin _demo coverage.out coverage.html
