"""The result cache on real RabbitMQ and Postgres: a second run of a cached step is served from
the cache by the coordinator process (no step message), and the entry is stored once."""

from __future__ import annotations

import json
from pathlib import Path

from .conftest import miniflow, query

WORKFLOW = """name: cached-diamond
params: {x: {default: 2}}
steps:
  - {name: a, task: diamond.source, cache: {ttl: 600}}
  - {name: b, task: diamond.double, needs: [a], cache: {ttl: 600}}
  - {name: c, task: diamond.square, needs: [a]}
  - {name: d, task: diamond.sum, needs: [b, c]}
"""


def test_a_second_run_is_served_from_the_cache_across_processes(cluster: dict[str, str], tmp_path: Path) -> None:
    (tmp_path / "cached.yaml").write_text(WORKFLOW)
    assert miniflow(cluster, "deploy", str(tmp_path / "cached.yaml")).returncode == 0
    db = cluster["MINIFLOW_DATABASE_URL"]
    query(db, "delete from step_cache where workflow = 'cached-diamond' returning digest")
    runs = []
    for _ in range(2):
        result = miniflow(cluster, "start", "cached-diamond", "-p", "x=5", "--wait", "--timeout", "60", "--json")
        assert result.returncode == 0, result.stderr + result.stdout
        runs.append(json.loads(result.stdout))
    first, second = runs
    assert first["status"] == second["status"] == "succeeded"
    outputs = [{s["step"]: s["output"] for s in r["steps"]} for r in runs]
    assert outputs[0] == outputs[1] == {"a": 5, "b": 10, "c": 25, "d": 35}
    nodes = dict(query(db, "select step, node from step_attempts where run_id = %s", second["id"]))
    assert nodes["a"] == "cache" and nodes["b"] == "cache" and nodes["c"] != "cache" and nodes["d"] != "cache"
    assert query(db, "select count(*), sum(hits) from step_cache where workflow = 'cached-diamond'") == [(2, 2)]
    assert query(db, "select count(*), count(distinct step) from step_attempts where run_id = %s",
                 second["id"]) == [(4, 4)]
