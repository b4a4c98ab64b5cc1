# edge_eco: `make demo` runs the main job on real data; `make test` runs the test suite.
# Both create the virtual environment and install edge_eco with its compiled kernel first.

PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
DATA   ?= $(if $(EDGE_ECO_DATA),$(EDGE_ECO_DATA),../shared/data)
STAMP  := $(VENV)/.installed-stamp
# Real serving engines the interop tests talk to (MLServer, tritonclient), in a venv of their own.
PEERS  ?= .venv-peers
PEERS_STAMP := $(PEERS)/.installed-stamp

.PHONY: demo test install peers models minilm har clean

install: $(STAMP)

$(STAMP): pyproject.toml setup.py native/edge_eco.h native/featurize.c native/router.c native/ortrun.c native/build_native.py
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip "setuptools>=77" wheel
	$(PY) -m pip install --quiet -e ".[remote,dev,litert,signing]"
	$(PY) -c "import edge_eco._native as n; assert n.available(), 'compiled kernel missing'"
	touch $(STAMP)

# The remote generalist is committed (under 25 MB); rebuild it only when it is missing.
models/minilm/minilm.onnx:
	$(MAKE) minilm

demo: $(STAMP) models/minilm/minilm.onnx
	$(PY) tools/demo.py --data $(DATA) --out build/demo-report.json

peers: $(PEERS_STAMP)

$(PEERS_STAMP): tests/peers/requirements.txt
	$(PYTHON) -m venv $(PEERS)
	$(PEERS)/bin/python -m pip install --quiet --upgrade pip
	$(PEERS)/bin/python -m pip install --quiet -r tests/peers/requirements.txt
	touch $(PEERS_STAMP)

test: $(STAMP) $(PEERS_STAMP)
	EDGE_ECO_DATA=$(DATA) EDGE_ECO_PEERS_PYTHON=$(abspath $(PEERS))/bin/python $(PY) -m pytest -q

# Rebuild the shipped ecologies from ../shared/data (needs the build extra: torch, onnx, ...).
models: $(STAMP)
	$(PY) -m pip install --quiet -e ".[build,remote,dev]"
	$(VENV)/bin/edge-eco build recipes/clinc150.toml --data $(DATA) --out models/clinc150
	$(VENV)/bin/edge-eco build recipes/sib200.toml --data $(DATA) --out models/sib200
	$(MAKE) har

minilm: $(STAMP)
	$(PY) -m pip install --quiet -e ".[build,remote,dev]"
	$(VENV)/bin/edge-eco build recipes/minilm.toml --data $(DATA) --out models/minilm

har: $(STAMP)
	$(PY) -m pip install --quiet -e ".[build,litert,remote,dev]"
	$(VENV)/bin/edge-eco build recipes/har.toml --data $(DATA) --out models/har

clean:
	rm -rf build $(VENV) $(PEERS) edge_eco/*.so
