"""The test engine's figure: the shipped scenario suite (examples/scenarios) run embedded, serially
and with -j 2, as cases per second (best of ``repeat``), next to the virtual time the suite spans.

    python -m bench.scenarios
"""

from __future__ import annotations

import json
import logging
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent


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
    return out


if __name__ == "__main__":
    print(json.dumps(scenario_figures(), indent=2))
