# Two entry points for a fresh machine: `make quickstart` and `make test`.
# Both create (or reuse) the virtual environment in .venv first.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: setup quickstart test bench

setup: $(STAMP)

# torch is pinned in the same install, so pip takes the CPU build that lies on this
# machine's disk instead of resolving the range to a multi-GB CUDA build. --no-compile, then
# compileall without torch: where PYTHONDONTWRITEBYTECODE is set (containers, CI) nothing would
# ever be cached, and every command would compile SQLAlchemy, pydantic and rich from source
# at start-up (about half a second of CPU); torch's 700 MB are compiled by nobody's start-up.
$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check --no-compile torch==2.13.0 -e '.[dev]'
	$(PY) -m compileall -q -j 0 -x '/(torch|tests?)/' $(VENV)/lib > /dev/null
	touch $(STAMP)

quickstart: $(STAMP)
	$(PY) -m hil.run protocols/quickstart.yaml --backend mock

test: $(STAMP)
	$(PY) -m pytest -q

bench: $(STAMP)
	$(PY) benchmarks/bench_mvm.py
	$(PY) benchmarks/bench_db.py
	$(PY) benchmarks/bench_seq.py
	$(PY) benchmarks/bench_executor.py
	$(PY) benchmarks/bench_startup.py
	$(PY) benchmarks/bench_memory.py
	$(PY) benchmarks/bench_write_verify.py
