"""The test engine's figures: the shipped scenario suite (examples/scenarios) run embedded, serially
and with -j 2, as cases per second (best of ``repeat``), next to the virtual time the suite spans;
and the same suite `miniflow test --against` this machine's RabbitMQ and Postgres (the workers'
start, the cases in real time, the teardown), next to the embedded time of the cases it ran.

    python -m bench.scenarios
"""

from __future__ import annotations

import json
import logging
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


def scenario_figures(repeat: int = 3) -> dict[str, Any]:
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    from miniflow.ops.testengine import run_scenarios
    from miniflow.ops.testengine.loader import discover, load_file

    logging.getLogger("miniflow").setLevel(logging.CRITICAL)
    logging.getLogger("dramatiq").setLevel(logging.CRITICAL)
    scenarios = [s for path in discover([ROOT / "examples" / "scenarios"]) for s in load_file(path)]
    out: dict[str, Any] = {}
    for jobs in (1, 2):
        best = None
        for _ in range(repeat):
            began = time.monotonic()
            suite = run_scenarios(scenarios, jobs=jobs)
            took = time.monotonic() - began
            if suite.exit_code != 0:
                raise SystemExit(f"the shipped scenario suite failed with -j {jobs}")
            best = took if best is None else min(best, took)
        assert best is not None
        out[f"j{jobs}"] = {"cases": len(suite.cases), "seconds": round(best, 2),
                           "cases_per_s": round(len(suite.cases) / best, 1)}
        out["virtual_s"] = round(sum(c.virtual_s or 0 for c in suite.cases), 1)
        if jobs == 1:  # what the same cases take embedded that --against runs (the rest need the virtual clock)
            real_time = {(s.source, s.name) for s in scenarios if s.virtual_only is None}
            out["embedded_s_of_the_cases_run_against"] = round(sum(c.wall_s for c in suite.cases
                                                                   if (c.source, c.scenario) in real_time), 2)
    return out


def against_figures(broker_url: str, admin_database_url: str) -> dict[str, Any]:
    """`miniflow test examples/scenarios --against`, timed: in all, the workers' start, the cases."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MINIFLOW_")}
    env.update(MINIFLOW_BROKER_URL=broker_url, MINIFLOW_DATABASE_URL=admin_database_url)
    with tempfile.TemporaryDirectory() as folder:
        report = Path(folder) / "report.json"
        began = time.monotonic()
        done = subprocess.run([str(BIN / "miniflow"), "test", "examples/scenarios", "--against", "--json", str(report)],
                              cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
        total = time.monotonic() - began
        if done.returncode != 0:
            raise SystemExit(f"the shipped scenario suite failed --against:\n{done.stdout[-3000:]}\n"
                             f"{done.stderr[-3000:]}")
        cases = json.loads(report.read_text())["cases"]
    ready = re.search(r"workers ready in namespace \S+ \((\d+(?:\.\d+)?)s\)", done.stderr)
    ran = [c for c in cases if c["outcome"] != "skipped"]
    return {"cases_run": len(ran), "cases_skipped": len(cases) - len(ran), "total_s": round(total, 2),
            "workers_start_s": float(ready.group(1)) if ready else None,
            "cases_s": round(sum(c["wall_s"] for c in ran), 2)}


if __name__ == "__main__":
    from bench.harness import ADMIN_DSN, BROKER_URL

    print(json.dumps({"embedded": scenario_figures(),
                      "against": against_figures(BROKER_URL, ADMIN_DSN.replace("postgresql:", "postgresql+psycopg2:"))},
                     indent=2))
