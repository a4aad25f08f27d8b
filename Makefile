# Two entry points on a fresh machine: `make demo` and `make test` (each creates .venv when missing).
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
PIP := $(PY) -m pip install -q --disable-pip-version-check

.PHONY: demo test bench bench-quick clean

$(STAMP): setup.cfg pyproject.toml constraints.txt
	test -x $(PY) || python3 -m venv $(VENV)
	$(PIP) --upgrade pip
	$(PIP) -c constraints.txt -e '.[train,dev]'
	# PaddleSeg itself, only to test our model and trainer against the reference's. Its pin
	# opencv-python<=4.6.0 clashes with paddleslim's ==4.6.0.66, so it goes in without its deps.
	$(PIP) --no-deps paddleseg==2.8.0 filelock prettytable
	touch $@

demo: $(STAMP)
	$(VENV)/bin/ddrnet demo

# pytest's exit code 5 (no test collected) is a failure, not a pass
test: $(STAMP)
	$(PY) -m pytest -q; rc=$$?; if [ $$rc -eq 5 ]; then echo "no tests collected"; exit 1; fi; exit $$rc

bench: $(STAMP)
	$(PY) benchmarks/run.py

bench-quick: $(STAMP)
	$(PY) benchmarks/run.py --quick

clean:
	rm -rf $(VENV) demo_out .pytest_cache
