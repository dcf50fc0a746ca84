"""Map steps on the real RabbitMQ and Postgres, with the coordinator and two executors as their own
processes: 1,000 elements with one failing under each policy, 10,000 elements end to end (each
recorded once, their results in order), and an empty list. tests/test_map.py has the rest."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from .conftest import miniflow, own_namespace, poll, query, running


def fan(n: int, *, policy: str = "fail", concurrency: int = 1000, fail: list[int] | None = None,
        bare: bool = False) -> str:
    config = "{" + ", ".join([f"fail_items: {fail!r}" for _ in [1] if fail] + ["bare: true" for _ in [1] if bare]) + "}"
    return (f"name: map-{policy}-{n}\nsteps:\n  - {{name: split, task: test.range, config: {{n: {n}}}}}\n"
            f"  - name: work\n    task: test.element\n    needs: [split]\n    config: {config}\n"
            f"    map: {{over: split.items, concurrency: {concurrency}, on_failure: {policy}}}\n"
            "  - {name: join, task: test.echo, needs: [work]}\n")


@pytest.fixture(scope="module")
def space(env: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    with own_namespace(env, "map") as own:
        logs = tmp_path_factory.mktemp("map")
        with running(own, logs, "tests.steps_for_tests"):
            yield dict(own, LOGS=str(logs))


def start(space: dict[str, str], text: str) -> str:
    folder = Path(space["LOGS"])
    name = text.split("\n", 1)[0].removeprefix("name: ")
    (folder / f"{name}.yaml").write_text(text)
    assert miniflow(space, "deploy", str(folder / f"{name}.yaml")).returncode == 0
    key = f"map-{uuid.uuid4()}"
    started = miniflow(space, "start", name, "--key", key)
    assert started.returncode == 0, started.stderr
    found = poll(lambda: query(space["MINIFLOW_DATABASE_URL"], "select id from runs where idempotency_key = %s",
                               key), timeout=60, what="the run to be created")
    return str(found[0][0])


def ended(space: dict[str, str], run_id: str, timeout: float) -> tuple[str, str | None]:
    db = space["MINIFLOW_DATABASE_URL"]

    def done() -> tuple[str, str | None] | None:
        rows = query(db, "select status, error from runs where id = %s", run_id)
        return rows[0] if rows and rows[0][0] in ("succeeded", "failed", "cancelled") else None

    status, error = poll(done, timeout=timeout, interval=0.2, what=f"run {run_id} to end")
    return str(status), error


def instances(space: dict[str, str], run_id: str) -> dict[str, tuple[str, Any, int]]:
    rows = query(space["MINIFLOW_DATABASE_URL"], "select step, status, output, attempt from run_steps "
                 "where run_id = %s and step like 'work[%%'", run_id)
    return {step: (status, output, attempt) for step, status, output, attempt in rows}


def output_of(space: dict[str, str], run_id: str, step: str) -> Any:
    return query(space["MINIFLOW_DATABASE_URL"], "select output from run_steps where run_id = %s and step = %s",
                 run_id, step)[0][0]


@pytest.mark.parametrize("policy", ["fail", "continue"])
def test_a_thousand_elements_with_one_failing_end_as_their_policy_says_on_two_executors(space, policy):
    run_id = start(space, fan(1000, policy=policy, concurrency=100, fail=[401]))
    status, error = ended(space, run_id, timeout=240)
    found = instances(space, run_id)
    assert len(found) == 1000 and found["work[401]"][0] == "failed"
    if policy == "fail":
        assert status == "failed" and "its element 401 failed" in (error or "")
        assert not [name for name, (s, _, _) in found.items() if s in ("pending", "queued")]
    else:
        assert status == "succeeded", error
        results = output_of(space, run_id, "join")["inputs"]["work"]
        assert results[401] is None and [r["item"] for r in results if r is not None] == \
            [i for i in range(1000) if i != 401]
    nodes = query(space["MINIFLOW_DATABASE_URL"], "select count(distinct node) from step_attempts "
                  "where run_id = %s and step like 'work[%%'", run_id)[0][0]
    assert nodes == 2, "the elements did not spread over both executors"


def test_ten_thousand_elements_run_once_each_and_arrive_in_order(space):
    began = time.monotonic()
    run_id = start(space, fan(10_000, bare=True))
    status, error = ended(space, run_id, timeout=600)
    took = time.monotonic() - began
    assert status == "succeeded", error
    assert output_of(space, run_id, "join")["inputs"]["work"] == list(range(10_000))
    found = instances(space, run_id)
    assert len(found) == 10_000 and {s for s, _, _ in found.values()} == {"succeeded"}
    twice = query(space["MINIFLOW_DATABASE_URL"], "select count(*) from (select step from step_attempts where "
                  "run_id = %s group by step having count(*) > 1) t", run_id)[0][0]
    assert twice == 0
    print(f"10,000 elements: {took:.1f} s, {10_000 / took:.0f} elements/s")


def test_an_empty_list_succeeds_with_an_empty_list(space):
    run_id = start(space, fan(0))
    status, error = ended(space, run_id, timeout=60)
    assert status == "succeeded", error
    assert output_of(space, run_id, "join")["inputs"] == {"work": []}
    assert instances(space, run_id) == {}
