# Two commands do all set-up on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
# The tests' Triton server: nvidia-pytriton bundles tritonserver, whose Python-backend stub links
# Debian's libpython3.11, and it needs numpy<2: so an environment of its own, on Debian's python.
TRITON_VENV := .venv-triton
TRITON_STAMP := $(TRITON_VENV)/.installed-stamp

.PHONY: demo test lint models sweep bench bench-tools simulate cascade-simulation fuzz soak stack venv triton-env system-tools clean locks images

DEMO_STAMP := $(VENV)/.demo-stamp
# Every environment `make demo` and `make test` build installs exactly the versions in this lock
# (pip constraints: only what an extra asks for is installed, at the locked version). The package's
# own metadata keeps ranges for people who install it as a library; `make locks` refreshes both.
DEV_LOCK := requirements-dev.lock
# torch's CPU build lies in /opt/wheels on this kind of machine (pip finds it there by itself
# here; said again so that no pip configuration is needed)
FIND_LINKS := $(if $(wildcard /opt/wheels),--find-links /opt/wheels,)
PIP := $(BIN)/pip install --quiet --disable-pip-version-check $(FIND_LINKS) -c $(DEV_LOCK)

venv: $(STAMP)

# What the demo runs and nothing more: serving plus the controller (no torch, no plotting, no
# linters), so a newcomer's `make demo` installs the least. Rebuilt when pyproject.toml changes.
$(DEMO_STAMP): pyproject.toml $(DEV_LOCK)
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(PIP) -e '.[controller]'
	touch $(DEMO_STAMP)

# Everything else: the report's charts, training (torch==2.13.0 comes from this machine's wheel
# cache) and the developer tools.
$(STAMP): $(DEMO_STAMP)
	$(PIP) -e '.[controller,report,train,dev]'
	touch $(STAMP)

triton-env: $(TRITON_STAMP)

$(TRITON_STAMP):
	test -x $(TRITON_VENV)/bin/python || /usr/bin/python3.11 -m venv $(TRITON_VENV)
	$(TRITON_VENV)/bin/pip install --quiet --disable-pip-version-check \
		nvidia-pytriton==0.7.0 "numpy<2" onnxruntime
	touch $(TRITON_STAMP)

# Real programs the tests use: Debian's Prometheus (and promtool), Chromium for the report,
# podman and debootstrap to build the CPU image.
system-tools:
	@command -v prometheus >/dev/null && command -v promtool >/dev/null \
		&& command -v chromium >/dev/null && command -v podman >/dev/null \
		&& command -v debootstrap >/dev/null && command -v redis-server >/dev/null || { \
		$(SUDO) apt-get update -q && \
		DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -q --no-install-recommends \
			prometheus chromium podman debootstrap redis-server; }

demo: $(DEMO_STAMP)
	$(BIN)/distill-demo

lint: venv
	$(BIN)/ruff format --check .
	$(BIN)/ruff check .
	$(BIN)/mypy

# Lint runs beside the tests at the lowest priority, on the cycles they leave idle (as the image
# build does, tests/image_build.py): mypy's cold half minute off the suite's path. An error of its
# own is printed at once and still fails `make test`, once the tests are done.
test: venv system-tools bench-tools triton-env
	nice -n 19 $(MAKE) --no-print-directory lint & linting=$$!; \
		$(BIN)/pytest; tested=$$?; \
		wait $$linting; linted=$$?; \
		[ $$tested -ne 0 ] && exit $$tested; exit $$linted

# Gateway, Prometheus, traffic and a rollout as local processes; stays up for Grafana.
stack: venv system-tools
	$(BIN)/distill-stack

models: venv
	$(BIN)/distill-models build

# The distillation sweep (README: The sweep): resumes; then the frontier and its plot.
sweep: venv
	$(BIN)/distill-models sweep
	$(BIN)/distill-models pareto

# The fuzz suite (tests/test_fuzz.py) with 20x the examples CI runs: about 5 minutes.
fuzz: venv
	FUZZ_EXAMPLES=3000 $(BIN)/pytest -p no:randomly tests/test_fuzz.py

# 30 minutes of mixed traffic; RSS, open files, event-loop lag and p99 per minute, in
# tests/benchmarks/results/soak.json (the suite runs 1 minute of it).
soak: venv
	$(BIN)/python -m tests.soak --minutes 30

# wrk (Debian's C load generator) drives the benchmarks that need more load than a Python client
# can make.
bench-tools:
	@command -v wrk >/dev/null && command -v taskset >/dev/null || { \
		$(SUDO) apt-get update -q && \
		DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -q --no-install-recommends wrk util-linux; }

bench: venv triton-env bench-tools
	$(BIN)/python -m tests.benchmarks.bench_gateway
	$(BIN)/python -m tests.benchmarks.bench_protocols
	$(BIN)/python -m tests.benchmarks.bench_triton
	$(BIN)/python -m tests.benchmarks.bench_reliability
	$(BIN)/python -m tests.benchmarks.bench_serving
	$(BIN)/python -m tests.benchmarks.bench_padded
	$(BIN)/python -m tests.benchmarks.bench_cascade
	$(BIN)/python -m tests.benchmarks.bench_fleet
	$(BIN)/python -m tests.benchmarks.bench_isolation

# The cascade's data-chosen threshold: how often it breaks its bound, 2,000 simulated runs (~20 s).
cascade-simulation: venv
	$(BIN)/python -m tests.cascade_simulation --runs 2000 --seed 1

# Decision quality: simulated rollouts through the controller's own analysis (about 35 minutes on 2
# cores, a minute on 16).
simulate: venv
	$(BIN)/distill-canary simulate --runs 500 --seed 1 \
		--json tests/benchmarks/results/simulation.json --png tests/benchmarks/results/simulation.png

# Refresh every lock on purpose, in a commit of its own that runs the whole suite: the test and
# demo environment's (every extra; torch is the CPU build this machine keeps in /opt/wheels, so no
# hashes: PyPI's torch 2.13.0 is a CUDA build with other hashes) and the images' (with hashes, from
# deploy/docker/requirements-*.in).
locks: venv
	$(BIN)/uv pip compile pyproject.toml --all-extras --python-version 3.11 \
		--python-platform x86_64-manylinux_2_28 --find-links /opt/wheels \
		--no-emit-find-links -o $(DEV_LOCK)
	$(BIN)/uv pip compile deploy/docker/requirements-cpu.in --python-version 3.11 \
		--python-platform x86_64-manylinux_2_28 --generate-hashes -o deploy/docker/requirements-cpu.lock
	$(BIN)/uv pip compile deploy/docker/requirements-cuda.in --python-version 3.12 \
		--python-platform x86_64-manylinux_2_28 --generate-hashes -o deploy/docker/requirements-cuda.lock

# The CPU and CUDA images (needs podman or docker, and a registry for the base images).
CONTAINER ?= $(shell command -v podman || command -v docker)
images:
	$(CONTAINER) build -f deploy/docker/Dockerfile.cpu -t distill-gateway:cpu .
	$(CONTAINER) build -f deploy/docker/Dockerfile.cuda -t distill-gateway:cuda .

clean:
	rm -rf $(VENV) $(TRITON_VENV) .pytest_cache .mypy_cache .ruff_cache models/.cache
