# One command to run the system, one to test it; both do their own set-up (README).
#   make run    virtualenv + packages + Kafka jars, then `orbilnot up`
#   make test   the same set-up + newman + helm, then every test (starts its own PostgreSQL and Kafka)
#   make chaos  the reliability suite's long form
#   make bench  the stack on its own infrastructure, measured (PROFILE=1: with py-spy profiles)
#   make lint   ruff and mypy
#   make image       the Docker image from this checkout (needs a Docker engine: scripts/docker-engine.sh up)
#   make image-test  build the image and run the system as its containers (installs and starts Docker)
#   make k8s-test  the chart on a live single-node Kubernetes of its own (root; README, "Deploy")

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
BIN := $(VENV)/bin
KAFKA_LIB := .orbilnot/kafka-lib
TESTS ?= tests/unit tests/integration tests/e2e tests/reliability tests/deploy

.PHONY: run test chaos bench lint format setup kafka-jars helm clean lock image image-test k8s-test

run: setup kafka-jars
	$(BIN)/orbilnot up

test: setup kafka-jars node_modules/.installed helm
	$(PY) -m pytest $(TESTS)

# The reliability suite's long form: more orders, more kills (README, "Guarantees").
chaos: setup kafka-jars
	ORBILNOT_CHAOS=long $(PY) -m pytest tests/reliability -v

# The image, tagged IMAGE (scripts/build-image.sh says how and prints the tag).
IMAGE ?= orbilnot:local
image:
	./scripts/build-image.sh $(IMAGE)

# Installs docker.io and debootstrap when missing, starts dockerd when none answers (and stops it
# afterwards), builds the image and runs migrate, the services and the gateway as its containers
# on the test's own PostgreSQL and Kafka (README, "Deploy"). Not part of `make test`.
image-test: setup kafka-jars node_modules/.installed
	$(PY) -m pytest tests/image -v

# Throughput, latency per stage and CPU per order of every process; results in bench-results/
# (README, "Performance"). BENCH_ARGS passes options through: `make bench BENCH_ARGS=--help`.
bench: setup kafka-jars
	$(PY) -m bench $(if $(PROFILE),--profile) $(BENCH_ARGS)

# Builds (once, into /var/cache/orbilnot-k8s) the Kubernetes binaries and the images, then
# starts a cluster from nothing, runs the chart's day-1 and day-2 steps on it and tears it down.
k8s-test: setup kafka-jars helm
	apt-get install -y -q etcd-server containerd runc containernetworking-plugins conntrack socat iptables nftables >/dev/null \
	  || (apt-get update -q >/dev/null && apt-get install -y -q etcd-server containerd runc containernetworking-plugins conntrack socat iptables nftables >/dev/null)
	./scripts/k8s/build-binaries.sh >/dev/null
	./scripts/k8s/build-images.sh >/dev/null
	$(PY) -m pytest tests/k8s -v -s

lint: setup
	$(BIN)/ruff check src tests scripts bench
	$(BIN)/ruff format --check src tests scripts bench
	$(BIN)/mypy

format: setup
	$(BIN)/ruff format src tests scripts bench
	$(BIN)/ruff check --fix src tests scripts bench

setup: $(VENV)/.installed

$(VENV)/.installed: requirements-dev.lock pyproject.toml
	@$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 11), "Python 3.11+ is required"'
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements-dev.lock
	$(PY) -m pip install --quiet --no-deps -e .
	touch $@

# The Kafka broker's jars, from Maven Central (see src/orbilnot/infra/kafka-pom.xml).
kafka-jars: setup
	$(PY) -c 'from pathlib import Path; from orbilnot.infra.kafka import ensure_kafka_jars; ensure_kafka_jars(Path("$(KAFKA_LIB)"))'

# newman runs the original system's Postman collection in tests/e2e.
node_modules/.installed: package.json package-lock.json
	npm ci --no-audit --no-fund --loglevel=error
	touch $@

# helm checks the chart in tests/deploy; built from the Go module proxy once.
helm:
	./scripts/ensure-helm.sh >/dev/null

# Re-pin the dependencies after changing pyproject.toml.
# OpenTelemetry's SQLAlchemy instrumentation is released a step behind its API and SDK: pinning
# the API to the release it accepts lets pip-compile settle instead of failing on the conflict.
LOCK_PINS := -P opentelemetry-api==1.45.1
lock:
	$(PY) -m pip install --quiet pip-tools
	$(BIN)/pip-compile --quiet --strip-extras --no-emit-index-url --no-emit-find-links $(LOCK_PINS) -o requirements.lock pyproject.toml
	$(BIN)/pip-compile --quiet --strip-extras --no-emit-index-url --no-emit-find-links $(LOCK_PINS) --extra dev -o requirements-dev.lock pyproject.toml

clean:
	rm -rf $(VENV) node_modules .pytest_cache .mypy_cache .ruff_cache
