# `make run` and `make test` do all set-up themselves: a .venv with the requirements.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python

.PHONY: run cifar test test-scenarios bench clean

$(VENV)/.installed: requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt
	touch $@

$(VENV)/.dev-installed: $(VENV)/.installed requirements-dev.txt
	$(PY) -m pip install --quiet -r requirements-dev.txt
	touch $@

run: $(VENV)/.installed  ## train Fashion-MNIST at the defaults into outputs/fashion_mnist/
	$(PY) vae_fashion_mnist.py

cifar: $(VENV)/.installed  ## train CIFAR-10 at the defaults into outputs/cifar10/
	$(PY) vae_cifar10.py

test: $(VENV)/.dev-installed  ## the test suite, two test files at a time (pytest-xdist), longest first
	$(PY) -m pytest -q -n 2 --dist loadfile --no-loadscope-reorder -m "not scenario" tests

test-scenarios: $(VENV)/.dev-installed  ## the long scenarios: signals, several processes, memory, the option sweep's runs, real data (CI runs both)
	$(PY) -m pytest -q -n 2 --dist loadfile --no-loadscope-reorder -m scenario tests

bench: $(VENV)/.installed  ## the benchmarks behind docs/BENCHMARKS.md (about 50 minutes on 2 cores)
	bash bench/run_all.sh

clean:
	rm -rf outputs bench/results .pytest_cache
