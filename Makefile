# Segments: everyday commands. `make help` lists them.

GO      ?= go
BIN     := bin/segments
SWAG    := $(GO) tool swag
SWAGDIR := internal/httpapi

.DEFAULT_GOAL := help

.PHONY: help
help: ## list the targets
	@grep -E '^[a-z0-9-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-12s %s\n", $$1, $$2}'

.PHONY: build
build: ## build bin/segments
	CGO_ENABLED=0 $(GO) build -trimpath -o $(BIN) ./cmd/segments

# make run's local servers (without Docker): ports and data directory.
PG_PORT    ?= 5432
REDIS_PORT ?= 6379
DATA_DIR   ?= .data

.PHONY: run
run: build ## run the whole service (Docker Compose if a Docker engine answers, else local Postgres and Redis; PG_PORT, REDIS_PORT, DATA_DIR, HTTP_ADDR)
	@if docker info >/dev/null 2>&1; then exec docker compose up --build; fi; \
	$(GO) build -o bin/devstack ./tools/cmd/devstack && \
	echo "No Docker engine: starting Postgres and Redis from local binaries" && \
	exec bin/devstack -dir $(DATA_DIR) -pg-port $(PG_PORT) -redis-port $(REDIS_PORT) -- \
		sh -c '$(BIN) migrate up && exec $(BIN) all'

.PHONY: reset
reset: ## delete make run's local data (DATA_DIR): the next make run starts from an empty database
	$(GO) run ./tools/cmd/devstack -dir $(DATA_DIR) -reset

.PHONY: test
test: lint docs-check test-go e2e ## everything CI runs: lint, docs check, Go tests, end-to-end checks

.PHONY: test-go
test-go: ## unit and integration tests (real Postgres and Redis), with the race detector; the API's again through PgBouncer in transaction mode; deployment file checks
	$(GO) test -race -count=1 -timeout 15m ./...
	TEST_PGBOUNCER=1 $(GO) test -count=1 -timeout 10m ./internal/httpapi
	cd deploy && $(GO) test -count=1 ./...

FUZZTIME ?= 60s

.PHONY: fuzz
fuzz: ## fuzz the real router on a real database for FUZZTIME (default 60s); any 5xx fails
	$(GO) test -run '^$$' -fuzz '^FuzzAPI$$' -fuzztime $(FUZZTIME) ./internal/httpapi

.PHONY: e2e
e2e: ## OpenAPI lint, Postman collection (newman), Swagger UI in headless Chromium
	e2e/run.sh

.PHONY: lint
lint: ## gofmt and go vet
	@out=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$out" ]; then echo "gofmt would change:"; echo "$$out"; exit 1; fi
	$(GO) vet ./...
	cd deploy && $(GO) vet ./...

.PHONY: docs
docs: ## regenerate the OpenAPI 3.0.3 spec in docs/ from the annotations (swag, then tools/cmd/openapi), the Go client in client/ (oapi-codegen) and docs/schema.sql from the migrations
	$(SWAG) fmt -d $(SWAGDIR)
	$(SWAG) init -q -g routes.go -d $(SWAGDIR) -o docs --outputTypes json --parseInternal --useStructName
	$(GO) run ./tools/cmd/openapi docs/swagger.json docs/openapi.json
	$(GO) tool oapi-codegen -config client/oapi-codegen.yaml docs/openapi.json
	$(GO) run ./tools/cmd/schema docs/schema.sql

.PHONY: docs-check
docs-check: ## fail if docs/ or the Go client is not what the annotations and the migrations generate
	@tmp=$$(mktemp -d) && trap 'rm -rf $$tmp' EXIT && \
	$(SWAG) init -q -g routes.go -d $(SWAGDIR) -o $$tmp/docs --outputTypes json --parseInternal --useStructName && \
	$(GO) run ./tools/cmd/openapi $$tmp/docs/swagger.json $$tmp/docs/openapi.json && \
	sed "s|^output: .*|output: $$tmp/client.gen.go|" client/oapi-codegen.yaml >$$tmp/oapi-codegen.yaml && \
	$(GO) tool oapi-codegen -config $$tmp/oapi-codegen.yaml $$tmp/docs/openapi.json && \
	for f in docs/swagger.json docs/openapi.json client.gen.go; do \
		mine=$$f; [ $$f = client.gen.go ] && mine=client/client.gen.go; \
		diff -u $$mine $$tmp/$$f >/dev/null || { echo "$$mine is out of date: run make docs"; diff -u $$mine $$tmp/$$f | head -40; exit 1; }; \
	done && echo "docs/ and client/ are up to date"
	$(GO) run ./tools/cmd/schema -check docs/schema.sql

.PHONY: migrate-up migrate-down migrate-version
migrate-up: build ## apply migrations to DATABASE_URL
	$(BIN) migrate up
migrate-down: build ## roll back the newest migration on DATABASE_URL
	$(BIN) migrate down
migrate-version: build ## print the schema version of DATABASE_URL
	$(BIN) migrate version

.PHONY: clean
clean: ## remove build output (keeps .data/)
	rm -rf bin build

.PHONY: bench
bench: ## measure the service end to end on this machine (BENCHMARKS.md); not part of test
	$(GO) test -run '^$$' -bench . -benchtime 2s ./internal/domain ./internal/httpapi ./internal/service
	$(GO) run ./tools/cmd/bench $(BENCH_FLAGS)
