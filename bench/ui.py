"""Web UI figures for `make bench`: time to first render of the run list and of a 100-step run page
with 100,000 runs in Postgres, measured by Playwright in Debian's chromium against a `miniflow api`
process (first contentful paint of each navigation, the browser's own Paint Timing), with the
server's share (the page's HTTP round trip alone) beside it.

Seeds a scratch database with the result monitor bench's 100,000 runs (bench/monitor_queries.py:
3 workflows, 7 days) and one finished run of a 100-step workflow (10 layers of 10, each step
needing two of the layer above).

    .venv/bin/python -m bench.ui [--runs 100000] [--repeat 9]
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import tempfile
import time
import uuid
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx

from bench.harness import ROOT, bench_env, miniflow, scratch_database
from bench.monitor_queries import WORKFLOWS, populate
from miniflow.coordinator import Catalog, loads
from miniflow.ops.processes import ApiProcess
from miniflow.persistence import AttemptRow, Database, RunRow, StepRow
from miniflow.persistence import repository as repo
from miniflow.protocol.clock import utcnow
from miniflow.protocol.states import RunStatus, StepStatus

ARGS = ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]
TARGET_MS = 300.0
# the first contentful paint of this navigation, in ms from its start (null if none within 5 s)
FCP = """() => new Promise(resolve => {
  const seen = performance.getEntriesByName('first-contentful-paint')[0];
  if (seen) { resolve(seen.startTime); return; }
  new PerformanceObserver(list => {
    const entry = list.getEntriesByName('first-contentful-paint')[0];
    if (entry) resolve(entry.startTime);
  }).observe({type: 'paint', buffered: true});
  setTimeout(() => resolve(null), 5000);
})"""


def wide_workflow(layers: int = 10, width: int = 10) -> str:
    lines = ["name: bench-wide-100", "steps:"]
    for layer in range(layers):
        for i in range(width):
            needs = "" if layer == 0 else f", needs: [s{layer - 1}_{i}, s{layer - 1}_{(i + 1) % width}]"
            lines.append(f"  - {{name: s{layer}_{i}, task: bench.noop{needs}}}")
    return "\n".join(lines) + "\n"


def seed(url: str, runs: int) -> str:
    """The rows, the definitions, and the id of the 100-step run."""
    database = Database(url)
    now = utcnow()
    populate(database, runs, 7, 200, now)
    catalog = Catalog()
    wide = loads(wide_workflow())
    with database.transaction() as conn:
        for name, chain in WORKFLOWS.items():
            text = f"name: {name}\nsteps:\n" + "".join(
                f"  - {{name: {s}, task: bench.noop{', needs: [' + chain[i - 1][0] + ']' if i else ''}}}\n"
                for i, (s, _) in enumerate(chain))
            catalog.deploy(conn, loads(text))
        version, _ = catalog.deploy(conn, wide)
        run_id = str(uuid.uuid4())
        start = now - timedelta(seconds=30)
        repo.insert_run(conn, RunRow(id=run_id, workflow=wide.name, version=version, status=RunStatus.SUCCEEDED,
                                     params={}, idempotency_key=f"bench-ui-{run_id}", priority=0, created_at=start,
                                     started_at=start, finished_at=start + timedelta(seconds=12)))
        steps: list[StepRow] = []
        attempts: list[AttemptRow] = []
        for n, name in enumerate(wide.steps):
            layer = n // 10
            began = start + timedelta(seconds=layer + 0.1)
            ended = began + timedelta(seconds=0.5 + (n % 10) / 20)
            steps.append(StepRow(run_id=run_id, step=name, status=StepStatus.SUCCEEDED, attempt=1, output={"n": n},
                                 node="bench:1", queued_at=began - timedelta(seconds=0.05), started_at=began,
                                 finished_at=ended))
            attempts.append(AttemptRow(run_id=run_id, step=name, attempt=1, ok=True, started_at=began,
                                       finished_at=ended, duration_ms=(ended - began).total_seconds() * 1000,
                                       recorded_at=ended, output={"n": n}, node="bench:1"))
        repo.insert_steps(conn, steps)
        for a in attempts:
            repo.insert_attempt(conn, a)
    database.dispose()
    return run_id


def measure(url: str, token: str, pages: dict[str, str], repeat: int) -> dict[str, Any]:
    from playwright.sync_api import sync_playwright

    chromium = shutil.which("chromium") or "/usr/bin/chromium"
    out: dict[str, Any] = {}
    with sync_playwright() as driver:
        browser = driver.chromium.launch(executable_path=chromium, args=ARGS)
        try:
            context = browser.new_context(viewport={"width": 1280, "height": 900})
            page = context.new_page()
            page.goto(url + "/ui/login")
            page.fill("#key", token)
            page.click("#sign-in")
            page.wait_for_url("**/ui/runs")
            cookie = next(c["value"] for c in context.cookies() if c["name"] == "mf_session")
            with httpx.Client(base_url=url, cookies={"mf_session": cookie}, timeout=60) as http:
                for label, path in pages.items():
                    paints, serves, cold = [], [], None
                    for i in range(repeat + 1):  # the first is a warm-up (caches, the layout of the graph)
                        page.goto(url + path, wait_until="load")
                        fcp = page.evaluate(FCP)
                        sent = time.perf_counter()
                        answer = http.get(path)
                        served = (time.perf_counter() - sent) * 1000
                        answer.raise_for_status()
                        if not i:
                            cold = fcp
                        elif fcp is not None:
                            paints.append(float(fcp))
                            serves.append(served)
                    out[label] = {"first_render_ms_median": round(statistics.median(paints), 1),
                                  "first_render_ms_max": round(max(paints), 1),
                                  "server_ms_median": round(statistics.median(serves), 1),
                                  "first_visit_ms": round(float(cold), 1) if cold is not None else None,
                                  "under_target": statistics.median(paints) < TARGET_MS, "samples": len(paints)}
        finally:
            browser.close()
    return out


def ui_figures(runs: int = 100_000, repeat: int = 9) -> dict[str, Any]:
    with scratch_database() as db:
        env = bench_env(f"bench_ui_{uuid.uuid4().hex[:6]}", db)
        env.pop("MINIFLOW_BROKER_URL", None)  # the pages measured here read the database only
        miniflow(env, "db", "upgrade")
        began = time.monotonic()
        run_id = seed(db, runs)
        seeded_s = time.monotonic() - began
        token = json.loads(miniflow(env, "keys", "create", "--name", "bench-ui", "--role", "viewer",
                                    "--json"))["token"]
        log = Path(tempfile.mkstemp(prefix="miniflow-bench-ui-", suffix=".log")[1])
        server = ApiProcess(env, ["--port", "0", "--auth-failures", "1000000"], log, cwd=ROOT)
        try:
            server.wait_ready()
            figures = measure(server.url, token, {
                "run_list": "/ui/runs", "run_list_filtered": "/ui/runs?status=failed&workflow=etl",
                "run_list_text_search": "/ui/runs?text=timeout",
                "run_page_100_steps": f"/ui/runs/{run_id}"}, repeat)
        finally:
            server.stop()
    return {"runs_in_database": runs, "seed_s": round(seeded_s, 1), "target_ms": TARGET_MS, **figures}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=9)
    args = parser.parse_args()
    print(json.dumps(ui_figures(args.runs, args.repeat), indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
