# The whole developer workflow. Everything installs into .venv from a bare clone.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
TOOLS  := $(VENV)/tools
PROMTOOL := $(TOOLS)/promtool

.PHONY: install tools browser demo test test-unit test-integration lint bench faults clean

install: $(STAMP) tools browser

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

# promtool checks ops/dashboards/alerts.yml (tests/test_dashboards.py). It is no Python package, and
# installing Debian's prometheus package would start a server, so when promtool is neither in
# .venv/tools nor on PATH we download that package and take only /usr/bin/promtool out of it. Without
# apt-get (not Debian) we say so and go on: the test skips then, and fails under CI=true.
tools:
	@set -e; \
	if [ -x "$(PROMTOOL)" ] || command -v promtool >/dev/null 2>&1; then exit 0; fi; \
	if ! command -v apt-get >/dev/null 2>&1 || ! command -v dpkg-deb >/dev/null 2>&1; then \
		echo "make tools: no apt-get/dpkg-deb here, promtool not fetched: put Prometheus' promtool on PATH" >&2; \
		exit 0; \
	fi; \
	tmp=$$(mktemp -d); trap 'rm -rf "$$tmp"' EXIT; \
	echo "make tools: fetching promtool from Debian's prometheus package into $(TOOLS)"; \
	if ! (cd "$$tmp" && apt-get download -q prometheus) >"$$tmp/log" 2>&1; then \
		echo "make tools: apt-get download failed, updating the package lists first"; \
		if [ "$$(id -u)" -eq 0 ]; then apt-get update -q >>"$$tmp/log" 2>&1 || true; \
		else sudo -n apt-get update -q >>"$$tmp/log" 2>&1 || true; fi; \
		if ! (cd "$$tmp" && apt-get download -q prometheus) >>"$$tmp/log" 2>&1; then \
			cat "$$tmp/log" >&2; \
			echo "make tools: could not download Debian's prometheus package (see above); install promtool" \
				"yourself (it is /usr/bin/promtool of that package) and put it on PATH" >&2; \
			exit 1; \
		fi; \
	fi; \
	if ! { dpkg-deb --fsys-tarfile "$$tmp"/prometheus_*.deb >"$$tmp/data.tar" && \
		tar -xf "$$tmp/data.tar" -C "$$tmp" ./usr/bin/promtool; }; then \
		echo "make tools: no ./usr/bin/promtool in $$(basename "$$tmp"/prometheus_*.deb)" >&2; exit 1; \
	fi; \
	mkdir -p "$(TOOLS)"; \
	install -m 0755 "$$tmp/usr/bin/promtool" "$(PROMTOOL).part"; \
	if ! "$(PROMTOOL).part" --version >/dev/null 2>&1; then \
		rm -f "$(PROMTOOL).part"; echo "make tools: the extracted promtool does not run here" >&2; exit 1; \
	fi; \
	mv -f "$(PROMTOOL).part" "$(PROMTOOL)"; \
	echo "make tools: $$("$(PROMTOOL)" --version 2>&1 | head -n 1) in $(PROMTOOL)"

# The web UI's browser tests drive Debian's chromium through Playwright (Playwright's own browser
# download is not used: it needs a host this machine cannot reach). Installed with apt-get when it is
# missing and we are root (or may sudo without a password); otherwise we say so and go on: the
# browser tests skip then, and fail under CI=true.
CHROMIUM ?= /usr/bin/chromium
browser:
	@set -e; \
	if [ -x "$(CHROMIUM)" ] || command -v chromium >/dev/null 2>&1; then exit 0; fi; \
	if ! command -v apt-get >/dev/null 2>&1; then \
		echo "make browser: no apt-get here: install Chromium and set MINIFLOW_CHROMIUM to its path" >&2; exit 0; \
	fi; \
	if [ "$$(id -u)" -eq 0 ]; then sudo=""; elif sudo -n true 2>/dev/null; then sudo="sudo -n"; else \
		echo "make browser: not root: run 'apt-get install chromium' for the browser tests" >&2; exit 0; fi; \
	echo "make browser: installing Debian's chromium for the web UI's browser tests"; \
	log=$$(mktemp); \
	if ! $$sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium >"$$log" 2>&1; then \
		$$sudo apt-get update -q >>"$$log" 2>&1 || true; \
		if ! $$sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium >>"$$log" 2>&1; then \
			cat "$$log" >&2; rm -f "$$log"; echo "make browser: could not install chromium (see above)" >&2; exit 1; \
		fi; \
	fi; \
	rm -f "$$log"; echo "make browser: $$(chromium --version 2>/dev/null | head -n 1)"

demo: install
	$(BIN)/miniflow run examples/csv_report.yaml --steps examples.steps --db sqlite:///.miniflow-demo.db

test: install
	$(BIN)/pytest tests --durations=10

test-unit: install
	$(BIN)/pytest tests --ignore=tests/integration

test-integration: install
	$(BIN)/pytest tests/integration

lint: install
	$(BIN)/ruff check .
	$(BIN)/mypy

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .miniflow-demo.db build *.egg-info

faults: install
	rm -f reports/faults.json
	$(BIN)/pytest tests/integration/test_fault_matrix.py tests/integration/test_partition.py \
		tests/integration/test_faults.py
	$(BIN)/python -m tests.integration.faults_report

bench: install
	$(BIN)/python -m bench.run
