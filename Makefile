# volley: `make demo` (a real distributed run against a local CPU Triton) and `make test`.
PY ?= python3
VENV := .venv
TVENV := .venv-triton
# MLServer (a second KServe v2 server) and the iris JSON service (FastAPI, onnxruntime,
# trained with scikit-learn + skl2onnx) for the tests, in their own env.
MVENV := .venv-mlserver
SERVERS := mlserver==1.7.1 scikit-learn==1.9.1 skl2onnx==1.20.0 onnxruntime==1.32.0
IRIS_ONNX := triton_models/iris/1/iris.onnx
PYTHON := $(VENV)/bin/python
VOLLEY := $(VENV)/bin/volley
# nvidia-pytriton ships the real tritonserver binary; it pins numpy<2, so it gets its own env
# (with onnxruntime for the iris model, triton_models/iris).
PYTRITON := nvidia-pytriton==0.7.0
TRITON_ORT := onnxruntime==1.32.0
DEMO_RATE ?= 200
DEMO_DURATION ?= 20s

.PHONY: install demo test test-fast lint typecheck proto bench clean browser nginx

install: $(VENV)/.installed $(TVENV)/.installed $(TVENV)/.onnxruntime $(MVENV)/.installed \
	$(IRIS_ONNX)

$(VENV)/.installed: pyproject.toml
	$(PY) -m venv $(VENV)
	$(PYTHON) -m pip install -q --upgrade pip
	$(PYTHON) -m pip install -q -e '.[dev]'
	touch $@

$(TVENV)/.installed:
	$(PY) -m venv $(TVENV)
	$(TVENV)/bin/pip install -q $(PYTRITON)
	touch $@

$(TVENV)/.onnxruntime: $(TVENV)/.installed
	$(TVENV)/bin/pip install -q $(TRITON_ORT)
	touch $@

$(MVENV)/.installed:
	$(PY) -m venv $(MVENV)
	$(MVENV)/bin/pip install -q $(SERVERS)
	touch $@

# The iris model, trained at build time from scikit-learn's bundled iris data.
$(IRIS_ONNX): examples/iris_service/train.py $(MVENV)/.installed
	$(MVENV)/bin/python examples/iris_service/train.py $@

proto: $(VENV)/.installed
	$(PYTHON) scripts/gen_proto.py

demo: install
	VOLLEY_PY=$(PYTHON) DEMO_RATE=$(DEMO_RATE) DEMO_DURATION=$(DEMO_DURATION) bash scripts/demo.sh

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports

# Headless Chromium for the report tests (Debian's package; needs root to install).
browser:
	@command -v chromium >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium >/dev/null || \
	      { apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium >/dev/null; }; \
	  else echo "chromium not installed and not root: the report browser tests will skip"; fi; }

# nginx for the proxy tests (Debian's nginx-light: grpc_pass, HTTP/2; needs root to install).
nginx:
	@command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    DEBIAN_FRONTEND=noninteractive apt-get install -y -q nginx-light >/dev/null || \
	      { apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q nginx-light >/dev/null; }; \
	  else echo "nginx not installed and not root: the proxy tests will skip"; fi; }

# Unit tests on two processes (pytest-xdist; none of them times anything tightly), then
# the integration tests one at a time (they measure latency on a shared machine).
test: install lint browser nginx
	$(PYTHON) -m pytest -q -ra -n 2 tests/unit
	$(PYTHON) -m pytest -q -ra tests/integration

test-fast: $(VENV)/.installed
	$(PYTHON) -m pytest -q -ra tests/unit

bench: install
	$(PYTHON) bench/run.py

clean:
	rm -rf $(VENV) $(TVENV) $(MVENV) .volley .pytest_cache .mypy_cache .ruff_cache
