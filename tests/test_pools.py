"""Slots of step pools: at most N steps of a pool dispatched at once across runs and workflows,
waiting steps shown as such and admitted as slots come back (a step that ends however it ends, a
run cancelled), and by the reconciler's pass when a limit rises. On the embedded engine
(tests/integration/test_pools.py has the real services)."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from miniflow.coordinator import loads
from miniflow.ops.cli import cli
from miniflow.ops.embedded import EmbeddedEngine
from miniflow.ops.polling import poll_until
from miniflow.persistence import repository as repo
from miniflow.protocol.clock import utcnow

from .steps_for_tests import GATES

WIDE = """name: wide-slow
steps:
""" + "".join(f"  - {{name: s{i}, task: test.sleep, queue: slow, config: {{seconds: 0.05}}}}\n" for i in range(6))


@pytest.fixture
def pooled(tmp_path: Path) -> Any:
    with EmbeddedEngine(f"sqlite:///{tmp_path / 'pools.db'}", threads=8, pools=["slow"]) as engine:
        yield engine


def holding(name: str, gate: str) -> str:
    return f"name: {name}\nsteps:\n  - {{name: hold, task: test.gate, queue: slow, config: {{gate: {gate}}}}}\n"


def hold_the_slot(engine: EmbeddedEngine, name: str, gate: str) -> str:
    """Deploy and start a run whose one step holds the pool's only slot until ``GATES[gate]`` is set."""
    set_slots(engine, "slow", 1)
    engine.deploy(loads(holding(name, gate)))
    key = engine.submit(name, {})
    poll_until(lambda: in_use(engine) == 1, timeout=30, what="the holder to take the slot")
    return key


def wait_in_line(engine: EmbeddedEngine, keys: list[str], step: str) -> None:
    """Until the runs of ``keys`` each have ``step`` waiting for a slot."""
    def waiting() -> bool:
        with engine.db.connect() as conn:
            ids = [repo.run_id_for_key(conn, k) for k in keys]
            rows = [repo.get_step(conn, i, step) if i else None for i in ids]
        return all(r is not None and r.slot_wait_since is not None for r in rows)

    poll_until(waiting, timeout=30, what=f"{len(keys)} run(s) to wait for the slot")


def set_slots(engine: EmbeddedEngine, pool: str, slots: int | None) -> None:
    with engine.db.transaction() as conn:
        repo.set_pool_slots(conn, pool, slots, utcnow())


def in_use(engine: EmbeddedEngine, pool: str = "slow") -> int:
    with engine.db.connect() as conn:
        return repo.slots_in_use(conn, pool)


def test_a_pool_of_two_slots_never_has_more_than_two_steps_out_and_runs_them_all(pooled):
    set_slots(pooled, "slow", 2)
    pooled.deploy(loads(WIDE))
    keys = [pooled.submit("wide-slow", {}) for _ in range(3)]
    peak, notes = 0, set()
    while True:
        with pooled.db.connect() as conn:
            ids = [repo.run_id_for_key(conn, key) for key in keys]
            runs = [repo.get_run(conn, i) for i in ids if i]
            used = repo.slots_in_use(conn, "slow")
            notes |= {s.note for i in ids if i for s in repo.get_steps(conn, i).values() if s.slot_wait_since}
        peak = max(peak, used)
        if len(runs) == 3 and all(r is not None and r.status in ("succeeded", "failed") for r in runs):
            break
    assert peak == 2
    assert [r.status if r else None for r in runs] == ["succeeded"] * 3
    assert "waiting for a slot of pool 'slow' (2 slot(s), none free for it)" in notes
    assert in_use(pooled) == 0


def test_a_failing_step_gives_its_slot_back_and_a_cancelled_run_gives_back_all_of_its(pooled):
    gate = GATES.setdefault("pool-hold", threading.Event())
    pooled.deploy(loads("name: failing\nsteps:\n  - {name: only, task: test.boom, queue: slow}\n"))
    pooled.deploy(loads("name: after\nsteps:\n  - {name: only, task: test.echo, queue: slow}\n"))
    holder = hold_the_slot(pooled, "holder", "pool-hold")
    failing, after = pooled.submit("failing", {}), pooled.submit("after", {})
    wait_in_line(pooled, [failing, after], "only")
    with pooled.db.connect() as conn:
        holder_id = repo.run_id_for_key(conn, holder)
    pooled.cancel(holder_id, "make room")
    assert pooled.wait(failing, timeout=30).status == "failed"
    assert pooled.wait(after, timeout=30).status == "succeeded"
    assert pooled.wait(holder, timeout=30).status == "cancelled"
    gate.set()
    assert in_use(pooled) == 0


def test_a_raised_limit_admits_waiting_steps_at_the_reconcilers_next_pass(pooled):
    gate = GATES.setdefault("pool-raise", threading.Event())
    pooled.deploy(loads("name: quick\nsteps:\n  - {name: echo, task: test.echo, queue: slow}\n"))
    holder = hold_the_slot(pooled, "holder2", "pool-raise")
    quick = pooled.submit("quick", {})
    wait_in_line(pooled, [quick], "echo")
    set_slots(pooled, "slow", 2)
    assert pooled.node.reconciler is not None
    pooled.node.reconciler.run_once()
    assert pooled.wait(quick, timeout=30).status == "succeeded"  # while the holder still holds its slot
    assert in_use(pooled) == 1
    gate.set()
    assert pooled.wait(holder, timeout=30).status == "succeeded"


def test_miniflow_pools_set_and_list(tmp_path: Path, monkeypatch):
    url = f"sqlite:///{tmp_path / 'cli.db'}"
    with EmbeddedEngine(url, threads=2):
        pass
    monkeypatch.setenv("MINIFLOW_DATABASE_URL", url)
    runner = CliRunner()
    assert runner.invoke(cli, ["pools", "set", "gpu", "--slots", "3"]).exit_code == 0
    listed = runner.invoke(cli, ["pools", "list", "--json"])
    assert '"pool": "gpu"' in listed.output and '"slots": 3' in listed.output
    assert runner.invoke(cli, ["pools", "set", "gpu", "--unlimited"]).exit_code == 0
    assert runner.invoke(cli, ["pools", "list", "--json"]).output.strip() == "[]"
    bad = runner.invoke(cli, ["pools", "set", "../x", "--slots", "1"])
    assert "a pool is 1-64 characters" in str(bad.exception)
    assert "give --slots N or --unlimited" in str(runner.invoke(cli, ["pools", "set", "gpu"]).exception)


def test_waiting_steps_get_a_freed_slot_by_run_priority_before_steps_that_come_later(pooled):
    gate = GATES.setdefault("pool-order", threading.Event())
    pooled.deploy(loads("name: line\nsteps:\n  - {name: echo, task: test.echo, queue: slow}\n"))
    holder = hold_the_slot(pooled, "holder3", "pool-order")
    low, high = pooled.submit("line", {}, priority=0), pooled.submit("line", {}, priority=9)
    wait_in_line(pooled, [low, high], "echo")
    gate.set()  # the holder ends: its slot goes to the priority 9 run first, then to the other
    first, second = pooled.wait(high, timeout=30), pooled.wait(low, timeout=30)
    assert pooled.wait(holder, timeout=30).status == "succeeded"
    assert first.status == second.status == "succeeded"
    assert first.attempts[0].started_at < second.attempts[0].started_at
