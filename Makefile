# The two commands of the README: `make demo` and `make test`. Both install what they need.
PY      ?= python3
VENV    ?= .venv
BIN     := $(VENV)/bin
APT_PKGS := sip-tester tshark espeak-ng sox kamailio systemd chromium chromium-driver baresip linphone-cli
STAMP   := $(VENV)/.installed
NPM_STAMP := node_modules/.installed

.PHONY: install demo test lint typecheck unit bench bench-quick clean

install: $(STAMP) $(NPM_STAMP)

# Azurite (the Azure Storage emulator the media-storage tests start) and JsSIP (the web
# phone, bundled by esbuild into callengine/webphone/jssip.min.js), pinned in
# package.json / package-lock.json. Node.js: the machine's, else Debian's.
$(NPM_STAMP): package.json package-lock.json
	command -v npm >/dev/null || { apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nodejs npm >/dev/null; }
	npm ci --no-audit --no-fund --loglevel=error
	npm run --silent build
	touch $(NPM_STAMP)

$(STAMP): setup.py constraints.txt requirements-dev.txt
	@missing=""; for p in $(APT_PKGS); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "apt-get install$$missing"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	fi
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip==24.3.1
	$(BIN)/pip install -q -c constraints.txt -e '.[softphone]' -r requirements-dev.txt
	touch $(STAMP)

# The web phone (docs/webrtc.md): http://127.0.0.1:8088, SIP over ws://127.0.0.1:5066.
demo: install
	$(BIN)/callengine serve --listen 127.0.0.1:5060 --ws-port 5066 --webphone 127.0.0.1:8088

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: install
	$(BIN)/mypy

# The suite on two pytest processes (pytest-xdist), then the heavy tests alone, one at
# a time (tests/conftest.py). worksteal: a process that runs out of tests takes queued
# ones from the other (with the default "load" scheduling one process ran the last
# slow integration tests alone for minutes: 504-521 s for this phase, 365 s with it).
unit: install
	$(BIN)/pytest -n 2 --dist worksteal -m 'not heavy' tests
	$(BIN)/pytest -m heavy tests

test: lint typecheck unit

# The benchmark report (benchmarks/README.md, "Report"): sip_cps, media_streams and soak,
# then JSON, PNG plots and summary.md under benchmarks/results/<UTC timestamp>/, copied to
# benchmarks/results/latest/. Full: ~40-60 minutes on a quiet machine; bench-quick (or
# BENCH_QUICK=1 make bench): ~10 minutes. Run with nothing else on the machine.
bench: install
	$(BIN)/python -m benchmarks.report run

bench-quick: install
	$(BIN)/python -m benchmarks.report run --quick

clean:
	rm -rf $(VENV) build *.egg-info node_modules
