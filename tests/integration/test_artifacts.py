"""Large outputs by reference on the real RabbitMQ and Postgres, the coordinator and two executors as
their own processes sharing the session's artifact folder: a 20 MB output travels as an artifact
(the message and the database hold its reference), the step that needs it gets every byte with its
checksum checked, on whichever executor it runs; and `miniflow artifacts gc` keeps it."""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from .conftest import miniflow, own_namespace, query, running

BIG = """name: big-output
steps:
  - {name: make, task: test.blob, config: {kib: 20480}}
  - {name: use, task: test.digest, needs: [make]}
"""


@pytest.fixture(scope="module")
def space(env: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    with own_namespace(env, "art") as own:
        logs = tmp_path_factory.mktemp("artifacts-logs")
        with running(own, logs, "tests.steps_for_tests", threads=2):
            (logs / "big.yaml").write_text(BIG)
            assert miniflow(own, "deploy", str(logs / "big.yaml")).returncode == 0
            yield own


def test_a_20_mb_output_travels_as_an_artifact_between_executors_and_arrives_whole(space):
    db = space["MINIFLOW_DATABASE_URL"]
    key = f"big-{uuid.uuid4()}"
    started = miniflow(space, "start", "big-output", "--key", key, "--wait", "--timeout", "180")
    assert started.returncode == 0, started.stdout + started.stderr
    run_id = query(db, "select id from runs where idempotency_key = %s", key)[0][0]
    rows = dict(query(db, "select step, output from run_steps where run_id = %s", run_id))
    ref = rows["make"]
    assert ref["$artifact"].startswith("sha256:") and ref["size"] > 20 * 1024 * 1024
    assert len(json.dumps(ref)) < 300  # the row (and every message) holds the reference only
    expected = "x" * (20480 * 1024)
    assert rows["use"]["make"] == {"len": len(expected), "sha256": hashlib.sha256(expected.encode()).hexdigest()}
    stored = Path(space["MINIFLOW_ARTIFACTS"]) / "sha256" / ref["$artifact"][7:9] / ref["$artifact"][9:]
    assert stored.stat().st_size == ref["size"]
    attempt = query(db, "select output from step_attempts where run_id = %s and step = 'make'", run_id)[0][0]
    assert attempt == ref
    kept = miniflow(space, "artifacts", "gc", "--older-than", "0s", "--dry-run", "--json")
    assert kept.returncode == 0, kept.stderr
    assert json.loads(kept.stdout)["referenced"] >= 1 and stored.exists()
