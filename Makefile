# The same commands CI runs: CI calls `make test` and nothing else.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# The test broker gets its own port and state, so a dev broker (make kafka-up) is left alone.
TEST_KAFKA_PORT ?= 19192
DEMO_KAFKA_PORT ?= 19292
COMPAT_KAFKA_PORT ?= 19492
MATRIX_KAFKA_PORT ?= 19892
# The two Kafka lines the end-to-end tests must pass against (make test-kafka-matrix).
KAFKA_MATRIX_VERSIONS ?= 4.4.0 3.9.2
KAFKA_E2E_TESTS := tests/integration/test_transfers_e2e.py tests/integration/test_commit_safety.py \
	tests/integration/test_exactly_once.py tests/compat/test_e2e_tls.py
export KAFKA_PORT ?= 19092

.PHONY: setup lock demo test soak unit lint kafka-up kafka-down kafka-fetch clean checkov-setup \
	kustomize-setup compat-setup test-compat test-kafka-matrix test-cluster image test-image

setup: $(VENV)/.installed

# Installs from the lock, never from pyproject.toml's ranges: requirements-dev.lock pins every
# package (the runtime ones exactly as requirements.lock, the image's, does; the dev tools; pip and
# the build backend) with its sha256 hashes. The venv is recreated when the lock changes, so it holds
# the lock and nothing else; the project itself goes in editable, offline, with no dependencies.
$(VENV)/.installed: pyproject.toml requirements-dev.lock
	$(PYTHON) -m venv --clear $(VENV)
	$(BIN)/pip install --quiet --require-hashes --requirement requirements-dev.lock
	$(BIN)/pip install --quiet --no-deps --no-build-isolation --editable .
	touch $@

# Re-resolve the three lock files (needs PyPI; a few minutes). Pins stay where pyproject.toml and
# requirements-build.in still allow them; LOCK_ARGS=--upgrade moves every pin to the newest allowed
# release, LOCK_ARGS="--upgrade-package aiohttp" just that one. Commit the lock files with the
# change that needed them; `make setup`, CI and the image then install exactly those.
LOCK_ARGS ?=
PIP_COMPILE := CUSTOM_COMPILE_COMMAND="make lock" $(BIN)/pip-compile --quiet --generate-hashes \
	--strip-extras --allow-unsafe --no-emit-find-links $(LOCK_ARGS)
lock: setup
	$(PIP_COMPILE) --output-file requirements-build.lock requirements-build.in
	$(PIP_COMPILE) --output-file requirements.lock pyproject.toml
	$(PIP_COMPILE) --extra dev --all-build-deps --constraint requirements.lock \
	  --constraint requirements-build.lock --output-file requirements-dev.lock pyproject.toml

# checkov (policy checks of k8s/ and the Dockerfile in tests/deploy) pins packaging<24, which the
# project's pytest cannot use, so it gets its own virtualenv; pinned so new checks land deliberately.
CHECKOV_VENV := .cache/checkov-venv
CHECKOV_VERSION := 3.3.30
checkov-setup: $(CHECKOV_VENV)/.installed-$(CHECKOV_VERSION)

$(CHECKOV_VENV)/.installed-$(CHECKOV_VERSION):
	$(PYTHON) -m venv $(CHECKOV_VENV)
	$(CHECKOV_VENV)/bin/pip install --quiet checkov==$(CHECKOV_VERSION)
	touch $@

# kustomize renders k8s/ in tests/deploy, built from source through the Go module proxy (no
# prebuilt download, no kubectl needed). Pinned: v5.8.2 is the newest whose module builds on the
# machine's Go (1.26); GOTOOLCHAIN=local so a newer pin fails here instead of fetching a Go.
# About 3 minutes the first time, instant after.
KUSTOMIZE_VERSION := v5.8.2
KUSTOMIZE_BIN := .cache/bin
kustomize-setup: $(KUSTOMIZE_BIN)/.installed-kustomize-$(KUSTOMIZE_VERSION)

$(KUSTOMIZE_BIN)/.installed-kustomize-$(KUSTOMIZE_VERSION):
	mkdir -p $(KUSTOMIZE_BIN)
	GOBIN=$(CURDIR)/$(KUSTOMIZE_BIN) GOFLAGS=-mod=mod GOTOOLCHAIN=local \
	  go install sigs.k8s.io/kustomize/kustomize/v5@$(KUSTOMIZE_VERSION)
	$(KUSTOMIZE_BIN)/kustomize version | grep -qx '$(KUSTOMIZE_VERSION)'
	touch $@

kafka-fetch:
	scripts/local-kafka.sh fetch

kafka-up:
	scripts/local-kafka.sh up

kafka-down:
	scripts/local-kafka.sh down

demo: setup kafka-fetch
	PYTHON=$(BIN)/python KAFKA_PORT=$(DEMO_KAFKA_PORT) $(BIN)/python -m scripts.demo

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/python -m scripts.layers

# Larger delivery runs than `make test` (10x the crash-safety and completion tasks), own broker.
SOAK_KAFKA_PORT ?= 19992
soak: setup kafka-fetch compat-setup
	KAFKA_PORT=$(SOAK_KAFKA_PORT) KAFKA_STATE_DIR=$(CURDIR)/.local/kafka-soak scripts/local-kafka.sh up
	FTP_POOLER_TEST_KAFKA=127.0.0.1:$(SOAK_KAFKA_PORT) FTP_POOLER_SOAK_SCALE=10 \
	  FTP_POOLER_TEST_KAFKA_STATE=$(CURDIR)/.local/kafka-soak \
	  $(BIN)/pytest -s tests/integration/test_delivery.py tests/integration/test_poison.py \
	  tests/integration/test_exactly_once.py \
	  tests/compat/test_completion_e2e.py; \
	status=$$?; KAFKA_PORT=$(SOAK_KAFKA_PORT) KAFKA_STATE_DIR=$(CURDIR)/.local/kafka-soak \
	  scripts/local-kafka.sh down; exit $$status

unit: setup
	$(BIN)/pytest tests/unit

# vsftpd, ProFTPD and Pure-FTPd from Debian's packages plus their test user (root; idempotent,
# about 10 s the first time, instant after). tests/compat runs them; see README "Compatibility".
compat-setup:
	scripts/ftp-servers.sh install

# The compatibility suite alone (also part of `make test`), on its own broker.
test-compat: setup kafka-fetch compat-setup
	KAFKA_PORT=$(COMPAT_KAFKA_PORT) KAFKA_STATE_DIR=$(CURDIR)/.local/kafka-compat-$(COMPAT_KAFKA_PORT) scripts/local-kafka.sh down
	rm -rf $(CURDIR)/.local/kafka-compat-$(COMPAT_KAFKA_PORT)
	KAFKA_PORT=$(COMPAT_KAFKA_PORT) KAFKA_STATE_DIR=$(CURDIR)/.local/kafka-compat-$(COMPAT_KAFKA_PORT) scripts/local-kafka.sh up
	FTP_POOLER_TEST_KAFKA=127.0.0.1:$(COMPAT_KAFKA_PORT) $(BIN)/pytest tests/compat; status=$$?; \
	KAFKA_PORT=$(COMPAT_KAFKA_PORT) KAFKA_STATE_DIR=$(CURDIR)/.local/kafka-compat-$(COMPAT_KAFKA_PORT) scripts/local-kafka.sh down; \
	exit $$status

# The end-to-end tests once per Kafka line, each on a fresh broker of that version. The tests that
# restart the broker (test_exactly_once.py) restart this one: its version and state dir are passed.
test-kafka-matrix: setup compat-setup
	@failed=""; for version in $(KAFKA_MATRIX_VERSIONS); do \
	  state=$(CURDIR)/.local/kafka-matrix-$(MATRIX_KAFKA_PORT)-$$version; \
	  KAFKA_PORT=$(MATRIX_KAFKA_PORT) KAFKA_STATE_DIR=$$state scripts/local-kafka.sh down; \
	  rm -rf $$state; \
	  echo "== Kafka $$version"; \
	  if KAFKA_VERSION=$$version KAFKA_PORT=$(MATRIX_KAFKA_PORT) KAFKA_STATE_DIR=$$state scripts/local-kafka.sh up; then \
	    KAFKA_VERSION=$$version FTP_POOLER_TEST_KAFKA=127.0.0.1:$(MATRIX_KAFKA_PORT) \
	      FTP_POOLER_TEST_KAFKA_STATE=$$state \
	      $(BIN)/pytest -q $(KAFKA_E2E_TESTS) || failed="$$failed $$version"; \
	  else failed="$$failed $$version"; fi; \
	  KAFKA_PORT=$(MATRIX_KAFKA_PORT) KAFKA_STATE_DIR=$$state scripts/local-kafka.sh down; \
	done; \
	if [ -n "$$failed" ]; then echo "test-kafka-matrix: failed against Kafka$$failed"; exit 1; fi; \
	echo "test-kafka-matrix: passed against Kafka $(KAFKA_MATRIX_VERSIONS)"

# The secured broker of the suite (tests/integration/test_secure_kafka.py, the client checks of
# test_kafka_setups.py): SASL_SSL on +2, mTLS on +3, PLAINTEXT on the port; no topic auto-creation.
TEST_SECURE_KAFKA_PORT ?= 19196
TEST_SECURE_KAFKA := KAFKA_SECURE=1 KAFKA_AUTO_CREATE_TOPICS=false KAFKA_PORT=$(TEST_SECURE_KAFKA_PORT) \
	KAFKA_STATE_DIR=$(CURDIR)/.local/kafka-test-secure-$(TEST_SECURE_KAFKA_PORT)

test: setup kafka-fetch lint checkov-setup kustomize-setup compat-setup
	KAFKA_PORT=$(TEST_KAFKA_PORT) KAFKA_STATE_DIR=$(CURDIR)/.local/kafka-test-$(TEST_KAFKA_PORT) scripts/local-kafka.sh down
	$(TEST_SECURE_KAFKA) scripts/local-kafka.sh down
	rm -rf $(CURDIR)/.local/kafka-test-$(TEST_KAFKA_PORT) $(CURDIR)/.local/kafka-test-secure-$(TEST_SECURE_KAFKA_PORT)
	KAFKA_PORT=$(TEST_KAFKA_PORT) KAFKA_STATE_DIR=$(CURDIR)/.local/kafka-test-$(TEST_KAFKA_PORT) scripts/local-kafka.sh up
	$(TEST_SECURE_KAFKA) scripts/local-kafka.sh up || { KAFKA_PORT=$(TEST_KAFKA_PORT) \
	  KAFKA_STATE_DIR=$(CURDIR)/.local/kafka-test-$(TEST_KAFKA_PORT) scripts/local-kafka.sh down; exit 1; }
	FTP_POOLER_TEST_KAFKA=127.0.0.1:$(TEST_KAFKA_PORT) \
	  FTP_POOLER_TEST_SECURE_KAFKA_STATE=$(CURDIR)/.local/kafka-test-secure-$(TEST_SECURE_KAFKA_PORT) \
	  $(BIN)/pytest; status=$$?; \
	KAFKA_PORT=$(TEST_KAFKA_PORT) KAFKA_STATE_DIR=$(CURDIR)/.local/kafka-test-$(TEST_KAFKA_PORT) scripts/local-kafka.sh down; \
	$(TEST_SECURE_KAFKA) scripts/local-kafka.sh down; \
	exit $$status

# The 3-broker cluster tests (tests/cluster, not collected by `make test`): RF 3, min ISR 2, a
# broker SIGKILLed mid-run, then two down. Starts and stops its own clusters (combined layout on
# TEST_CLUSTER_PORT..+5, split layout on +20..+26); about 6 minutes.
TEST_CLUSTER_PORT ?= 19740
test-cluster: setup kafka-fetch compat-setup
	FTP_POOLER_TEST_CLUSTER_PORT=$(TEST_CLUSTER_PORT) \
	  $(BIN)/pytest -p no:cacheprovider -s $(or $(PYTEST_CLUSTER_ARGS),tests/cluster)

clean:
	rm -rf $(VENV) .local .pytest_cache .mypy_cache .ruff_cache

# Benchmarks, not part of `make test`: a broker of their own, vsftpd and pyftpdlib on loopback,
# FTP Pooler end to end against lftp, rclone and curl (README, Performance). Installs the Debian
# packages and the local account for vsftpd it needs (root or sudo; idempotent). `bench` takes
# about 30 minutes and writes benchmarks/results/<date>-<host>.{json,md}; `bench-smoke` takes
# about a minute and writes .local/bench/results/. More options: BENCH_ARGS="--help".
BENCH_KAFKA_PORT ?= 19592
BENCH_KAFKA := KAFKA_PORT=$(BENCH_KAFKA_PORT) \
	KAFKA_STATE_DIR=$(CURDIR)/.local/kafka-bench-$(BENCH_KAFKA_PORT) PYTHON=$(CURDIR)/$(BIN)/python
BENCH_ARGS ?=

.PHONY: bench bench-smoke bench-deps

bench-deps:
	benchmarks/install-deps.sh

bench bench-smoke: setup kafka-fetch bench-deps
	$(BENCH_KAFKA) scripts/local-kafka.sh up
	$(BIN)/python -m benchmarks.run --kafka 127.0.0.1:$(BENCH_KAFKA_PORT) \
	  $(if $(filter bench-smoke,$@),--smoke) $(BENCH_ARGS); status=$$?; \
	$(BENCH_KAFKA) scripts/local-kafka.sh down; \
	exit $$status

# The secured broker and the 3-node clusters of scripts/local-kafka.sh (not part of `make test`).
# Dev instances: SASL_SSL on 19722, mTLS on 19723 (PLAINTEXT 19720), client settings in
# .local/kafka-secure/client.json; the cluster on 19700/02/04, .local/kafka-cluster-19700/cluster.json.
SECURE_KAFKA := KAFKA_SECURE=1 KAFKA_PORT=19720 KAFKA_STATE_DIR=$(CURDIR)/.local/kafka-secure
CLUSTER_KAFKA := KAFKA_CLUSTER_PORT=19700

.PHONY: kafka-secure-up kafka-secure-down kafka-cluster-up kafka-cluster-down test-kafka-setups

kafka-secure-up:
	$(SECURE_KAFKA) scripts/local-kafka.sh up

kafka-secure-down:
	$(SECURE_KAFKA) scripts/local-kafka.sh down

kafka-cluster-up:
	$(CLUSTER_KAFKA) scripts/local-kafka.sh cluster-up

kafka-cluster-down:
	$(CLUSTER_KAFKA) scripts/local-kafka.sh cluster-down

# The local-kafka.sh helpers alone: its secured broker's client checks (also in `make test`) and
# its clusters' failure behaviour (tests/cluster/test_kafka_cluster.py, also in `make test-cluster`).
test-kafka-setups: setup kafka-fetch
	$(MAKE) test-cluster PYTEST_CLUSTER_ARGS=tests/cluster/test_kafka_cluster.py

# The worker image (README, Deploy), not part of `make test`. `image` builds it with docker, podman
# or buildah, whichever works here (installing buildah from Debian when there is none); add
# IMAGE_BASE=debian where python:3.11-slim's registry is out of reach: a base of Debian's python3 is
# built with mmdebstrap first. `test-image` builds it, then runs the worker inside it as the cluster
# would (uid 1000, read-only root filesystem, the image's entrypoint and environment) against its
# own broker and a real FTP server, and stops it with SIGTERM (tests/image/test_image_run.py).
IMAGE ?= ftp-pooler:0.1.0
IMAGE_KAFKA_PORT ?= 19652
IMAGE_KAFKA := KAFKA_PORT=$(IMAGE_KAFKA_PORT) KAFKA_STATE_DIR=$(CURDIR)/.local/kafka-image-$(IMAGE_KAFKA_PORT)
export IMAGE

image:
	scripts/image.sh deps
	scripts/image.sh build

test-image: setup kafka-fetch image
	$(IMAGE_KAFKA) scripts/local-kafka.sh down
	rm -rf $(CURDIR)/.local/kafka-image-$(IMAGE_KAFKA_PORT)
	$(IMAGE_KAFKA) scripts/local-kafka.sh up
	FTP_POOLER_TEST_KAFKA=127.0.0.1:$(IMAGE_KAFKA_PORT) FTP_POOLER_TEST_IMAGE=$(IMAGE) \
	  FTP_POOLER_TEST_IMAGE_RUNNER=$$(scripts/image.sh builder) \
	  $(BIN)/pytest -s tests/image; status=$$?; \
	$(IMAGE_KAFKA) scripts/local-kafka.sh down; \
	exit $$status
