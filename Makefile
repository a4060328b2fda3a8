# Set-up and entry points. Everything a fresh machine needs is installed here.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install demo test test-fast docs lint clean down bench-peers

$(STAMP): pyproject.toml
	test -d $(VENV) || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# torch first: 2.13.0 is the CPU wheel on these machines; any other pulls GBs of CUDA packages
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/rayline run pipelines/digits.yaml
	$(BIN)/rayline serve serving/digits.yaml
	@echo "[demo] POST /v1/models/digits/predict with serving/digits-request.json (an image of a 7):"
	curl -sS --fail-with-body -X POST http://127.0.0.1:8000/v1/models/digits/predict \
	  -H 'Content-Type: application/json' --data @serving/digits-request.json
	@echo

test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -q --durations=15

# Everything but the tests marked slow (see the marker in pyproject.toml): a quick check, under 10 minutes here.
test-fast: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -q -m "not slow" --durations=15

# docs/spec.md from the spec models (tests/test_docs.py fails when it is stale)
docs: $(STAMP)
	$(BIN)/python -m rayline.spec.reference docs/spec.md

# The serving benchmark's LitServe and BentoML peers, in an environment of their own: BentoML pins OpenTelemetry
# older than the versions Ray and MLflow run with in $(VENV). torch first, for the same reason as above.
bench-peers: $(STAMP)
	test -d bench/.venv-peers || $(PYTHON) -m venv bench/.venv-peers
	bench/.venv-peers/bin/pip install -q torch==2.13.0
	bench/.venv-peers/bin/pip install -q -r bench/peers/requirements.txt

lint: $(STAMP)
	$(BIN)/ruff check .

down: $(STAMP)
	$(BIN)/rayline down

clean:
	-$(BIN)/rayline down
	rm -rf $(VENV) .rayline
