# Two commands do all the set-up on a fresh machine:
#   make demo   -- create .venv, install, run the main job on the embedded default
#   make test   -- create .venv, install, check notebooks == package, run every test
PYTHON ?= python3
VENV   ?= .venv
BIN     = $(VENV)/bin
TORCH  ?= torch==2.13.0
# extra pip arguments for torch, e.g. TORCH_INDEX="--index-url https://download.pytorch.org/whl/cu124"
TORCH_INDEX ?=
DEMO_ARGS ?=

.PHONY: demo test install export-check nbtest pytest docs bench clean

$(BIN)/.installed: settings.ini setup.py
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q "$(TORCH)" $(TORCH_INDEX)
	$(BIN)/python -m pip install -q -e ".[dev]"
	touch $@

install: $(BIN)/.installed

demo: install
	$(BIN)/open-chatgpt pipeline $(DEMO_ARGS)

# notebooks and package must agree: exporting must not change a single file of the package
export-check: install
	@before=$$(find open_chatgpt -name '*.py' | sort | xargs sha256sum | sha256sum); \
	PATH=$(BIN):$$PATH $(BIN)/nbdev_export; \
	after=$$(find open_chatgpt -name '*.py' | sort | xargs sha256sum | sha256sum); \
	if [ "$$before" != "$$after" ]; then \
	  echo "FAIL: nbdev_export changed the package: notebooks and open_chatgpt/ disagree. Run nbdev_export and commit."; \
	  git status --short open_chatgpt 2>/dev/null; exit 1; \
	else echo "ok: nbdev_export leaves the package unchanged"; fi

nbtest: install
	PATH=$(BIN):$$PATH $(BIN)/nbdev_test --n_workers 2 --timing

pytest: install
	$(BIN)/python -m pytest -q tests

test: export-check nbtest pytest

clean:
	rm -rf $(VENV) _docs _proc _site
