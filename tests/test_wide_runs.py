"""Wide runs: a result reads no other step of its run (the counters of
persistence/repository/counters.py), so a run of hundreds of parallel steps advances at a cost per
result that does not grow with its width. On the embedded engine (SQLite), which shares the code."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy import event, text

from miniflow.coordinator import loads
from miniflow.ops.polling import poll_until
from miniflow.persistence import repository as repo


def fan_out(width: int, *, fail: int | None = None, root: str = "{name: a, task: test.echo}",
            failing: str = "task: test.boom") -> str:
    """a -> w0..w{width-1} -> join; with ``fail``, that branch runs ``failing``."""
    lines = ["name: wide", "steps:", f"  - {root}"]
    for i in range(width):
        body = failing if i == fail else "task: test.echo"
        lines.append(f"  - {{name: w{i}, {body}, needs: [a]}}")
    needs = ", ".join(f"w{i}" for i in range(width))
    lines.append(f"  - {{name: join, task: test.echo, needs: [{needs}]}}")
    return "\n".join(lines) + "\n"


@contextmanager
def whole_run_reads(engine) -> Iterator[list[str]]:
    """The statements that read every step of a run (run_steps filtered by run only), from any thread
    but the test's own."""
    seen: list[str] = []
    mine = threading.get_ident()

    def before(conn, cursor, statement, parameters, context, executemany):  # noqa: ANN001
        flat = " ".join(statement.split())
        if threading.get_ident() != mine and flat.startswith("SELECT") and "FROM run_steps" in flat \
                and "run_steps.step" not in flat.split("WHERE", 1)[-1]:
            seen.append(flat)

    event.listen(engine.db.engine, "before_cursor_execute", before)
    try:
        yield seen
    finally:
        event.remove(engine.db.engine, "before_cursor_execute", before)


def test_a_run_of_200_parallel_steps_ends_and_its_join_gets_every_output_in_order(engine):
    engine.deploy(loads(fan_out(200)))
    with whole_run_reads(engine) as reads:
        run = engine.wait(engine.submit("wide", {"x": 1}), timeout=120)
    assert run.status == "succeeded", run.error
    join = next(s for s in run.steps if s.step == "join")
    assert list(join.output["inputs"]) == [f"w{i}" for i in range(200)]
    assert all(join.output["inputs"][f"w{i}"]["key"] == f"{run.run_id}:w{i}:1" for i in range(200))
    assert sorted(a.step for a in run.attempts) == sorted(["a", "join", *(f"w{i}" for i in range(200))])
    assert reads == []  # no result read the run's other steps


def test_a_failing_branch_fails_the_wide_run_and_skips_the_join(engine):
    engine.deploy(loads(fan_out(50, fail=17)))
    run = engine.wait(engine.submit("wide", {}), timeout=120)
    assert run.status == "failed" and "'w17'" in (run.error or "")
    statuses = {s.step: s.status for s in run.steps}
    assert statuses["join"] == "skipped" and statuses["w17"] == "failed"


def test_a_run_without_counters_is_counted_once_and_ends(engine):
    """A run from before migration 0010 (NULL counters) is counted on its first result."""
    from tests.steps_for_tests import GATES

    gate = f"legacy-{id(engine)}"
    engine.deploy(loads(fan_out(5, root=f"{{name: a, task: test.gate, config: {{gate: {gate}}}}}")))
    key = engine.submit("wide", {})
    run_id = poll_until(lambda: run_id_of(engine, key), timeout=30)
    with engine.db.transaction() as conn:  # while a is held: as if the run predated the counters
        conn.execute(text("UPDATE runs SET open_ends = NULL WHERE id = :r"), {"r": run_id})
        conn.execute(text("UPDATE run_steps SET waiting = NULL WHERE run_id = :r"), {"r": run_id})
    GATES.setdefault(gate, threading.Event()).set()
    run = engine.wait(key, timeout=60)
    assert run.status == "succeeded", run.error
    assert [a.step for a in run.attempts if a.step == "join"] == ["join"]
    with engine.db.connect() as conn:
        counted = repo.get_run(conn, run_id)
    assert counted is not None and counted.open_ends == 0


def run_id_of(engine, key: str) -> str | None:
    with engine.db.connect() as conn:
        return repo.run_id_for_key(conn, key)


def test_a_retried_run_is_counted_again_and_its_join_runs(engine):
    engine.deploy(loads(fan_out(3, fail=1, failing="task: test.flaky, config: {fail_times: 1}")))
    failed = engine.wait(engine.submit("wide", {}), timeout=60)
    assert failed.status == "failed"
    engine.retry(failed.run_id)
    run = poll_until(lambda: ended(engine, failed.run_id), timeout=60)
    assert run.status == "succeeded", run.error
    with engine.db.connect() as conn:
        steps = repo.get_steps(conn, failed.run_id)
    assert steps["join"].status == "succeeded" and set(steps["join"].output["inputs"]) == {"w0", "w1", "w2"}


def ended(engine, run_id: str):
    """The run once its retry has run w1 again and it has ended."""
    with engine.db.connect() as conn:
        again = repo.get_attempt(conn, run_id, "w1", 2)
        run = repo.get_run(conn, run_id)
    return run if again is not None and run is not None and run.status != "running" else None
