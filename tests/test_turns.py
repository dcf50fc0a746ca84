"""Large bodies take turns in the core roles (actors/turns.py): the bytes handled at once stay
within a budget, small bodies never wait, and nothing an interrupted thread held stays counted."""

from __future__ import annotations

import contextlib
import ctypes
import threading
from collections.abc import Iterator

from miniflow.actors.turns import Turns
from miniflow.coordinator import loads
from miniflow.ops.embedded import EmbeddedEngine
from miniflow.ops.polling import poll_until

KIB = 1024


class Holder:
    """A thread that takes a turn for ``size`` bytes and keeps it until ``leave`` is set."""

    def __init__(self, turns: Turns, size: int) -> None:
        self.inside = threading.Event()
        self.leave = threading.Event()
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, args=(turns, size), daemon=True)
        self.thread.start()

    def _run(self, turns: Turns, size: int) -> None:
        try:
            with turns.turn(size):
                self.inside.set()
                assert self.leave.wait(30), "the test never let the holder go"
        except BaseException as exc:  # noqa: BLE001 - kept for the test to look at
            self.error = exc

    def done(self) -> None:
        self.leave.set()
        self.thread.join(10)
        assert not self.thread.is_alive()


def test_bodies_that_do_not_fit_together_wait_and_small_ones_never_do():
    told: list[bool] = []
    turns = Turns(budget=256 * KIB, large=64 * KIB, counted=told.append)
    first = Holder(turns, 200 * KIB)
    assert first.inside.wait(10)
    small = Holder(turns, 10 * KIB)  # under the large mark: in at once, however full the budget
    assert small.inside.wait(10)
    second = Holder(turns, 100 * KIB)  # 200 + 100 KiB is over the budget: it waits
    poll_until(lambda: turns.waits == 1, timeout=10, what="the second body waiting")
    assert not second.inside.is_set()
    assert turns.in_use() == 200 * KIB
    first.done()
    assert second.inside.wait(10)  # in as soon as the first left
    assert turns.in_use() == 100 * KIB
    for holder in (small, second):
        holder.done()
    assert turns.in_use() == 0 and first.error is None and second.error is None
    assert told == [False, True]  # each large body as it entered: the first went straight in, the second waited


def test_bodies_that_fit_together_go_together_and_one_over_the_budget_goes_alone():
    turns = Turns(budget=256 * KIB, large=64 * KIB)
    two = [Holder(turns, 100 * KIB), Holder(turns, 100 * KIB)]
    assert all(h.inside.wait(10) for h in two)
    assert turns.waits == 0
    huge = Holder(turns, 1024 * KIB)  # more than the whole budget: waits for an empty budget
    poll_until(lambda: turns.waits == 1, timeout=10, what="the huge body waiting")
    two[0].done()
    assert not huge.inside.wait(0.2)  # not while anything else is in (a deliberate short look)
    two[1].done()
    assert huge.inside.wait(10)
    late = Holder(turns, 64 * KIB)  # and nothing large joins it
    poll_until(lambda: turns.waits == 2, timeout=10, what="the next body waiting behind the huge one")
    huge.done()
    assert late.inside.wait(10)
    late.done()
    assert turns.in_use() == 0


class Interrupted(Exception):
    """What dramatiq's time limit raises in a worker thread, asynchronously."""


def lined(turns: Turns, first: int, *waiting: int) -> list[Holder]:
    """A holder of ``first`` bytes inside, then one for each of ``waiting``, each seen waiting in line."""
    holders = [Holder(turns, first)]
    assert holders[0].inside.wait(10)
    for size in waiting:
        holders.append(Holder(turns, size))
        poll_until(lambda: turns.waits == len(holders) - 1, timeout=10, what=f"body {len(holders)} waiting in line")
    return holders


def test_bodies_enter_in_the_order_they_came_so_a_body_over_the_budget_is_not_passed_for_ever():
    turns = Turns(budget=256 * KIB, large=64 * KIB)
    # the last would fit beside the first, but the huge one came before it
    medium, huge, behind = lined(turns, 100 * KIB, 1024 * KIB, 100 * KIB)
    medium.done()
    assert huge.inside.wait(10)
    assert not behind.inside.is_set()
    huge.done()
    assert behind.inside.wait(10)
    behind.done()
    assert turns.in_use() == 0


def interrupt(thread: threading.Thread) -> None:
    assert thread.ident is not None
    assert ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(thread.ident), ctypes.py_object(Interrupted)) == 1


def test_a_thread_interrupted_while_it_waits_leaves_the_line_and_one_failing_inside_gives_back_its_bytes():
    turns = Turns(budget=256 * KIB, large=64 * KIB)
    first, waiter, behind = lined(turns, 200 * KIB, 200 * KIB, 200 * KIB)
    interrupt(waiter.thread)  # delivered at its next wake, within a second, with nothing else changing
    waiter.thread.join(10)
    assert isinstance(waiter.error, Interrupted) and not waiter.inside.is_set()
    first.done()
    assert behind.inside.wait(10)  # the line went on without the interrupted body
    behind.done()
    assert turns.in_use() == 0

    with contextlib.suppress(RuntimeError), turns.turn(200 * KIB):
        assert turns.in_use() == 200 * KIB
        raise RuntimeError("the handler failed")
    assert turns.in_use() == 0


def test_what_an_interruption_left_behind_is_cleared_by_that_threads_next_message():
    turns = Turns(budget=256 * KIB, large=64 * KIB)
    me = threading.get_ident()
    turns._holders[me] = (200 * KIB, 0)  # as if an exception had landed as this thread left its turn
    turns._line[me] = 0
    blocked = Holder(turns, 200 * KIB)
    poll_until(lambda: turns.waits == 1, timeout=10, what="a body waiting behind the stale entries")
    with turns.turn(10):  # this thread's next message, a small one
        pass
    assert blocked.inside.wait(10)
    blocked.done()
    assert turns.in_use() == 0 and turns._line == {}


BIG = """
name: big
steps:
  - {name: make, task: test.blob, config: {kib: 100}}
  - {name: take, task: test.echo, needs: [make]}
"""


def test_the_core_roles_handle_a_large_result_in_a_turn_and_small_messages_outside_one(engine: EmbeddedEngine):
    node = engine.node
    sizes: list[int] = []
    real = node.turns.turn

    @contextlib.contextmanager
    def counted(size: int) -> Iterator[None]:
        sizes.append(size)
        with real(size):
            yield

    node.turns.turn = counted  # type: ignore[method-assign]
    engine.deploy(loads(BIG))
    run = engine.wait(engine.submit("big", {}), timeout=30)
    assert run.status == "succeeded"
    assert len(next(s.output for s in run.steps if s.step == "make")) == 100 * KIB
    large = [s for s in sizes if s >= node.turns.large]
    # make's result (its output inline) and take's (echoing it), as received; the start is small
    assert len(large) == 2 and min(large) > 100 * KIB
    assert 0 < min(sizes) < node.turns.large  # the start: measured, small
    assert node.turns.in_use() == 0
