"""Group commit per run (actors/combiner.py): results of one run that arrive while another of that
run's results is being recorded are recorded together, in one transaction, and each message still
meets only its own error."""

from __future__ import annotations

import contextvars
import ctypes
import threading
import time
from collections.abc import Sequence
from pathlib import Path

import pytest

from miniflow.actors.combiner import Combiner, Entry
from miniflow.coordinator import loads
from miniflow.ops.embedded import EmbeddedEngine
from miniflow.ops.polling import poll_until
from miniflow.persistence import repository as repo
from miniflow.protocol.errors import MessageRejected
from miniflow.protocol.messages import StartWorkflow, StepResult

WHO = contextvars.ContextVar("who", default="nobody")


class Recorder:
    """An ``apply`` that records each batch (and the context each item was applied in), holds the
    batch of the item ``first`` until ``release`` is set, and fails the items named in ``failing``."""

    def __init__(self, failing: frozenset[str] = frozenset()) -> None:
        self.batches: list[list[str]] = []
        self.seen_in: dict[str, str] = {}
        self.release = threading.Event()
        self.failing = failing

    def __call__(self, entries: Sequence[Entry[str]]) -> list[BaseException | None]:
        items = [e.item for e in entries]
        if items == ["first"]:
            assert self.release.wait(30), "the test never released the first batch"
        self.batches.append(items)
        for entry in entries:
            self.seen_in[entry.item] = entry.context.run(WHO.get)
        return [ValueError(f"{i} is bad") if i in self.failing else None for i in items]


def submit_in_thread(combiner: Combiner[str], key: str, item: str, outcomes: dict[str, str]) -> threading.Thread:
    def run() -> None:
        WHO.set(f"thread of {item}")
        try:
            combiner.submit(key, item)
            outcomes[item] = "ok"
        except ValueError as exc:
            outcomes[item] = str(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def waiting(combiner: Combiner[str], key: str, count: int) -> None:
    poll_until(lambda: len(combiner._lines.get(key, [])) >= count, timeout=10, what=f"{count} items in line")


def held_line(combiner: Combiner[str], waiters: int, outcomes: dict[str, str]) -> list[threading.Thread]:
    """``first`` submitted for run-1 (and held by the Recorder), then r0, r1, ... in line behind it, in order."""
    threads = [submit_in_thread(combiner, "run-1", "first", outcomes)]
    poll_until(lambda: "run-1" in combiner._lines, timeout=10, what="the first item taken")
    for i in range(waiters):
        threads.append(submit_in_thread(combiner, "run-1", f"r{i}", outcomes))
        waiting(combiner, "run-1", i + 1)
    return threads


def released(apply: Recorder, threads: list[threading.Thread]) -> None:
    apply.release.set()
    for thread in threads:
        thread.join(10)


def test_items_arriving_while_a_key_is_applied_go_together_in_the_next_batch_each_in_its_own_context():
    apply = Recorder()
    combiner: Combiner[str] = Combiner(apply)
    outcomes: dict[str, str] = {}
    released(apply, held_line(combiner, 5, outcomes))
    assert apply.batches == [["first"], ["r0", "r1", "r2", "r3", "r4"]]
    assert outcomes == {"first": "ok", **{f"r{i}": "ok" for i in range(5)}}
    assert apply.seen_in == {item: f"thread of {item}" for item in outcomes}  # trace span, log fields
    assert (combiner.batches, combiner.items) == (2, 6)
    assert combiner._lines == {}


def test_each_thread_raises_only_its_own_items_error():
    apply = Recorder(failing=frozenset({"r1"}))
    combiner: Combiner[str] = Combiner(apply)
    outcomes: dict[str, str] = {}
    released(apply, held_line(combiner, 3, outcomes))
    assert outcomes == {"first": "ok", "r0": "ok", "r1": "r1 is bad", "r2": "ok"}


def test_an_apply_that_raises_fails_its_whole_batch_and_the_line_goes_on():
    calls: list[list[str]] = []
    gate = threading.Event()

    def apply(entries: Sequence[Entry[str]]) -> list[BaseException | None]:
        calls.append([e.item for e in entries])
        if len(calls) == 1:
            gate.wait(30)
            raise RuntimeError("the database went away")
        return [None] * len(entries)

    combiner: Combiner[str] = Combiner(apply)
    outcomes: dict[str, str] = {}
    errors: dict[str, str] = {}

    def run(item: str) -> None:
        try:
            combiner.submit("k", item)
            outcomes[item] = "ok"
        except RuntimeError as exc:
            errors[item] = str(exc)

    first = threading.Thread(target=run, args=("a",))
    first.start()
    poll_until(lambda: "k" in combiner._lines, timeout=10, what="the first item taken")
    second = threading.Thread(target=run, args=("b",))
    second.start()
    waiting(combiner, "k", 1)
    gate.set()
    first.join(10)
    second.join(10)
    assert errors == {"a": "the database went away"} and outcomes == {"b": "ok"}
    assert calls == [["a"], ["b"]]


def test_batches_hold_at_most_their_limit_and_other_keys_never_wait():
    apply = Recorder()
    combiner: Combiner[str] = Combiner(apply, most=3)
    outcomes: dict[str, str] = {}
    threads = held_line(combiner, 5, outcomes)
    other = submit_in_thread(combiner, "run-2", "elsewhere", outcomes)  # run-1's first batch is still held
    other.join(10)
    assert outcomes == {"elsewhere": "ok"}
    released(apply, threads)
    assert apply.batches[:2] == [["elsewhere"], ["first"]]  # run-2's went by while run-1's first was held
    assert [b for b in apply.batches if b[0].startswith("r")] == [["r0", "r1", "r2"], ["r3", "r4"]]
    assert len(outcomes) == 7


# -- the results handler: one transaction for several results, one error does not sink the others --
@pytest.fixture
def idle_engine(tmp_path: Path):
    """An embedded engine whose workers are not started: the test drives the handlers itself."""
    eng = EmbeddedEngine(f"sqlite:///{tmp_path / 'miniflow.db'}", threads=2, background=False)
    try:
        yield eng
    finally:
        eng.stop()


def result(run_id: str, step: str, *, attempt: int = 1) -> StepResult:
    now = time.time()
    return StepResult(run_id=run_id, step=step, attempt=attempt, ok=True, started_at=now - 0.01, finished_at=now,
                      output={"step": step}, node="test-node")


def started_run(engine: EmbeddedEngine, width: int) -> str:
    engine.deploy(loads("name: three\nsteps:\n" + "".join(f"  - {{name: s{i}, task: test.echo}}\n"
                                                            for i in range(width))))
    handlers = engine.node.handlers
    assert handlers is not None
    handlers.start_workflow(StartWorkflow(workflow="three", idempotency_key="k-1").to_payload())
    with engine.db.connect() as conn:
        run_id = repo.run_id_for_key(conn, "k-1")
    assert run_id is not None
    return run_id


def test_results_of_one_run_recorded_in_one_transaction_end_the_run(idle_engine: EmbeddedEngine):
    run_id = started_run(idle_engine, 3)
    handlers = idle_engine.node.handlers
    assert handlers is not None
    errors = handlers._record_results([Entry(result(run_id, f"s{i}")) for i in range(3)])
    assert errors == [None, None, None]
    with idle_engine.db.connect() as conn:
        run = repo.get_run(conn, run_id)
        steps = repo.get_steps(conn, run_id)
    assert run is not None and run.status == "succeeded"
    assert {name: row.status for name, row in steps.items()} == {f"s{i}": "succeeded" for i in range(3)}


def test_a_rejected_result_in_a_batch_gets_its_error_and_the_others_are_recorded(idle_engine: EmbeddedEngine):
    run_id = started_run(idle_engine, 3)
    handlers = idle_engine.node.handlers
    assert handlers is not None
    batch = [Entry(result(run_id, "s0")), Entry(result("no-such-run", "s1")), Entry(result(run_id, "nope")),
             Entry(result(run_id, "s0")), Entry(result(run_id, "s2"))]
    errors = handlers._record_results(batch)
    assert errors[0] is None and errors[3] is None and errors[4] is None  # a duplicate copy is ignored, no error
    assert isinstance(errors[1], MessageRejected) and "no-such-run" in str(errors[1])
    assert isinstance(errors[2], MessageRejected) and "nope" in str(errors[2])
    with idle_engine.db.connect() as conn:
        attempts = repo.get_attempts(conn, run_id)
        steps = repo.get_steps(conn, run_id)
    assert sorted(a.step for a in attempts) == ["s0", "s2"]  # once each
    assert steps["s1"].status == "queued" and steps["s0"].status == steps["s2"].status == "succeeded"


class Interrupted(Exception):
    """What dramatiq's time limit raises in a worker thread, asynchronously."""


def test_a_thread_interrupted_as_it_is_handed_a_batch_still_applies_it_and_nothing_hangs():
    apply = Recorder()
    combiner: Combiner[str] = Combiner(apply)
    outcomes: dict[str, str] = {}
    raised: list[str] = []
    threads = [submit_in_thread(combiner, "run-1", "first", outcomes)]
    poll_until(lambda: "run-1" in combiner._lines, timeout=10, what="the first item taken")

    def interrupted() -> None:
        try:
            combiner.submit("run-1", "r0")
            outcomes["r0"] = "ok"
        except Interrupted:
            raised.append("r0")

    taker = threading.Thread(target=interrupted, daemon=True)
    taker.start()
    waiting(combiner, "run-1", 1)
    threads.append(submit_in_thread(combiner, "run-1", "r1", outcomes))
    waiting(combiner, "run-1", 2)
    # delivered when the thread next runs Python code: as it wakes with the batch handed to it
    assert taker.ident is not None
    assert ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(taker.ident), ctypes.py_object(Interrupted)) == 1
    released(apply, [*threads, taker])
    assert apply.batches == [["first"], ["r0", "r1"]]  # applied all the same
    assert raised == ["r0"] and outcomes == {"first": "ok", "r1": "ok"}  # r1 was woken; r0's message retries
    assert combiner._lines == {}
    combiner.submit("run-1", "later")  # the run's line is free again
    assert apply.batches[-1] == ["later"]
