# Two commands do all set-up on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
FASHION := /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz
DEMO_OUT ?= runs/demo

.PHONY: install demo test test-slow lint fashion-mnist clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

# Debian's Fashion-MNIST files, for the tests and benchmarks that use them (skipped when apt is unavailable).
fashion-mnist:
	@test -f $(FASHION) || { (apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist) >/dev/null 2>&1 \
		|| echo "note: could not install dataset-fashion-mnist; its tests will be skipped"; }

demo: install
	$(VENV)/bin/d3hr distill --dataset digits --ipc 10 --out $(DEMO_OUT)
	$(VENV)/bin/d3hr evaluate $(DEMO_OUT) --student convnet --labels soft --seeds 3 --epochs 300
	$(VENV)/bin/d3hr report $(DEMO_OUT)

test: install fashion-mnist
	$(PY) -m pytest -q

test-slow: install fashion-mnist
	$(PY) -m pytest -q -m slow

lint: install
	$(VENV)/bin/ruff check src tests bench

clean:
	rm -rf $(VENV) runs .pytest_cache
