# eliq-pipeline: `make demo` and `make test` are all a new user needs.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# CPU wheel from local disk here; on a GPU machine pass e.g. TORCH_SPEC="torch" to get the CUDA build.
TORCH_SPEC ?= torch==2.13.0
ELIQ_HOME ?= $(CURDIR)/.eliq
DAGSTER_HOME := $(abspath $(ELIQ_HOME))/dagster
export ELIQ_HOME

.PHONY: setup demo cpu-demo test test-slow ui clean

setup: $(VENV)/.installed

# torch first, so installing the package never pulls a CUDA build of it.
$(VENV)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q "$(TORCH_SPEC)"
	$(BIN)/python -m pip install -q -e ".[test]"
	touch $@

$(DAGSTER_HOME)/dagster.yaml: dagster.yaml
	mkdir -p $(DAGSTER_HOME)
	sed 's#base_dir: .eliq/dagster/storage#base_dir: $(DAGSTER_HOME)/storage#' dagster.yaml > $@

demo: setup $(DAGSTER_HOME)/dagster.yaml
	DAGSTER_HOME=$(DAGSTER_HOME) $(BIN)/eliq materialize

# The `cpu` profile: a critic trained from scratch on real AI images (eras-cpu.yaml), in its own home.
# ELIQ_SUPAGRUEN names the supagruen-sd15 folder; ELIQ_DATASETS the benchmarks (AGIQA-3K, ...).
# It is `make demo` in that home, so the instance is set up by the one rule above (absolute paths).
CPU_HOME ?= $(CURDIR)/.eliq-cpu
cpu-demo:
	@test -n "$(ELIQ_SUPAGRUEN)" || { echo "set ELIQ_SUPAGRUEN=<folder of supagruen-sd15 (manifest.csv, images/)>" >&2; exit 2; }
	ELIQ_PROFILE=cpu ELIQ_ERAS=eras-cpu.yaml ELIQ_SUPAGRUEN=$(abspath $(ELIQ_SUPAGRUEN)) \
	  $(MAKE) --no-print-directory demo ELIQ_HOME=$(abspath $(CPU_HOME))

# The fast default: every test but those marked slow (real-data training, every README command).
test: setup
	$(BIN)/python -m pytest -m "not slow"

# The slow tests (tens of minutes on 2 cores); CI (.ci/run) runs them after `make test`.
test-slow: setup
	$(BIN)/python -m pytest -m slow

# `dagster dev` runs in the instance folder: started in the repo it would warn that ./dagster.yaml (the
# template copied into $(DAGSTER_HOME) above) is not used. So the paths the code location reads are
# passed as absolute ones, and the workspace is named explicitly. Its notice that `dg dev` (the
# dagster-dg-cli package, a test dependency here) supersedes it is silenced.
UI_PATHS := ELIQ_DATASETS ELIQ_PROMPTS_FILE ELIQ_NIQE_PARAMS ELIQ_SUPAGRUEN
ui: setup $(DAGSTER_HOME)/dagster.yaml
	cd $(DAGSTER_HOME) && ELIQ_HOME=$(abspath $(ELIQ_HOME)) ELIQ_ERAS=$(abspath $(or $(ELIQ_ERAS),eras.yaml)) \
	  $(foreach v,$(UI_PATHS),$(if $($(v)),$(v)=$(abspath $($(v))))) DAGSTER_HOME=$(DAGSTER_HOME) \
	  PYTHONWARNINGS='ignore:Function `dev_command` is superseded' \
	  $(abspath $(BIN))/dagster dev -h 127.0.0.1 -p 3000 -w $(CURDIR)/workspace.yaml

clean:
	rm -rf $(ELIQ_HOME)
