"""coordinator/state.py: the run/step state machine as pure functions."""

from __future__ import annotations

import random

import pytest

from miniflow.coordinator import Backoff, Decision, Workflow, backoff_delay, decide, parse, ready_steps
from miniflow.protocol.states import RunStatus, StepStatus

NO_JITTER = Backoff(initial=1.0, max=60.0, multiplier=2.0, jitter=0.0)


def diamond(retries: int = 0, backoff: Backoff | None = None) -> Workflow:
    """a -> (b, c) -> d; step b has ``retries`` and ``backoff``."""
    b: dict[str, object] = {"name": "b", "task": "t.b", "needs": ["a"], "retries": retries}
    if backoff is not None:
        b["backoff"] = {"initial": backoff.initial, "max": backoff.max, "multiplier": backoff.multiplier,
                        "jitter": backoff.jitter}
    return parse({"name": "diamond", "steps": [
        {"name": "a", "task": "t.a"}, b, {"name": "c", "task": "t.c", "needs": ["a"]},
        {"name": "d", "task": "t.d", "needs": ["b", "c"]},
    ]}, source="diamond.yaml")


def statuses(**given: StepStatus) -> dict[str, StepStatus]:
    """Every diamond step pending unless given."""
    return {"a": StepStatus.PENDING, "b": StepStatus.PENDING, "c": StepStatus.PENDING, "d": StepStatus.PENDING, **given}


# -- ready_steps ---------------------------------------------------------------------------------
def test_only_the_root_of_the_diamond_is_ready_at_the_start() -> None:
    assert ready_steps(diamond(), statuses()) == ["a"]


def test_both_middle_steps_are_ready_once_the_root_succeeded() -> None:
    assert ready_steps(diamond(), statuses(a=StepStatus.SUCCEEDED)) == ["b", "c"]


def test_the_join_waits_until_every_need_succeeded() -> None:
    wf = diamond()
    assert ready_steps(wf, statuses(a=StepStatus.SUCCEEDED, b=StepStatus.SUCCEEDED, c=StepStatus.QUEUED)) == []
    assert ready_steps(wf, statuses(a=StepStatus.SUCCEEDED, b=StepStatus.SUCCEEDED, c=StepStatus.SUCCEEDED)) == ["d"]


def test_queued_and_finished_steps_are_never_ready_again() -> None:
    wf = diamond()
    assert ready_steps(wf, statuses(a=StepStatus.QUEUED)) == []
    assert ready_steps(wf, statuses(a=StepStatus.SUCCEEDED, b=StepStatus.QUEUED, c=StepStatus.SUCCEEDED)) == []


def test_a_need_that_failed_or_was_skipped_never_makes_a_step_ready() -> None:
    wf = diamond()
    assert ready_steps(wf, statuses(a=StepStatus.FAILED)) == []
    assert ready_steps(wf, statuses(a=StepStatus.SUCCEEDED, b=StepStatus.SKIPPED, c=StepStatus.SUCCEEDED)) == []


# -- decide: success -----------------------------------------------------------------------------
def test_the_root_succeeding_dispatches_both_middle_steps() -> None:
    decision = decide(diamond(), statuses(a=StepStatus.QUEUED), "a", 1, ok=True)
    assert decision == Decision(StepStatus.SUCCEEDED, dispatch=("b", "c"))
    assert decision.run_status is None


def test_one_middle_step_succeeding_dispatches_nothing_while_the_other_is_out() -> None:
    given = statuses(a=StepStatus.SUCCEEDED, b=StepStatus.QUEUED, c=StepStatus.QUEUED)
    decision = decide(diamond(), given, "b", 1, ok=True)
    assert decision == Decision(StepStatus.SUCCEEDED, dispatch=())


def test_the_second_middle_step_succeeding_dispatches_the_join() -> None:
    decision = decide(diamond(), statuses(a=StepStatus.SUCCEEDED, b=StepStatus.SUCCEEDED, c=StepStatus.QUEUED), "c", 1,
                      ok=True)
    assert decision == Decision(StepStatus.SUCCEEDED, dispatch=("d",))


def test_the_last_success_ends_the_run_succeeded() -> None:
    decision = decide(diamond(), statuses(a=StepStatus.SUCCEEDED, b=StepStatus.SUCCEEDED, c=StepStatus.SUCCEEDED,
                                          d=StepStatus.QUEUED), "d", 1, ok=True)
    assert decision == Decision(StepStatus.SUCCEEDED, run_status=RunStatus.SUCCEEDED)
    assert decision.dispatch == ()
    assert decision.run_error is None


def test_decide_does_not_change_the_statuses_it_is_given() -> None:
    given = statuses(a=StepStatus.QUEUED)
    before = dict(given)
    decide(diamond(), given, "a", 1, ok=True)
    decide(diamond(), given, "a", 1, ok=False)
    assert given == before


def test_a_whole_diamond_run_dispatches_every_step_once_and_succeeds() -> None:
    wf = diamond()
    state = statuses()
    dispatched: list[str] = []
    outstanding = ready_steps(wf, state)
    for name in outstanding:
        state[name] = StepStatus.QUEUED
    run_status = None
    while outstanding:
        name = outstanding.pop(0)
        dispatched.append(name)
        decision = decide(wf, state, name, 1, ok=True)
        state[name] = decision.step_status
        for nxt in decision.dispatch:
            state[nxt] = StepStatus.QUEUED
            outstanding.append(nxt)
        run_status = decision.run_status or run_status
    assert dispatched == ["a", "b", "c", "d"]
    assert run_status == RunStatus.SUCCEEDED
    assert set(state.values()) == {StepStatus.SUCCEEDED}


# -- decide: failure -----------------------------------------------------------------------------
def test_a_failure_with_attempts_left_queues_the_step_again_after_a_backoff() -> None:
    policy = Backoff(initial=2.0, max=30.0, multiplier=3.0, jitter=0.25)
    wf = diamond(retries=2, backoff=policy)
    given = statuses(a=StepStatus.SUCCEEDED, b=StepStatus.QUEUED, c=StepStatus.QUEUED)
    decision = decide(wf, given, "b", 2, ok=False, error="boom", rng=random.Random(7))
    assert decision.step_status == StepStatus.QUEUED
    assert decision.retry_delay == backoff_delay(policy, 2, random.Random(7))
    assert decision.run_status is None
    assert (decision.dispatch, decision.skip, decision.cancel) == ((), (), ())


def test_the_retry_delay_without_jitter_follows_the_policy() -> None:
    wf = diamond(retries=3, backoff=Backoff(initial=1.5, max=60.0, multiplier=2.0, jitter=0.0))
    given = statuses(a=StepStatus.SUCCEEDED, b=StepStatus.QUEUED)
    assert [decide(wf, given, "b", n, ok=False).retry_delay for n in (1, 2, 3)] == [1.5, 3.0, 6.0]


def test_the_final_failure_fails_the_run_skips_pending_and_cancels_queued_steps() -> None:
    wf = diamond(retries=2)
    given = statuses(a=StepStatus.SUCCEEDED, b=StepStatus.QUEUED, c=StepStatus.QUEUED, d=StepStatus.PENDING)
    decision = decide(wf, given, "b", 3, ok=False, error="disk full")
    assert decision.step_status == StepStatus.FAILED
    assert decision.run_status == RunStatus.FAILED
    assert decision.run_error == "step 'b' failed after 3 attempts: disk full"
    assert decision.skip == ("d",)
    assert decision.cancel == ("c",)
    assert decision.dispatch == ()
    assert decision.retry_delay is None


def test_a_step_without_retries_fails_the_run_on_its_first_failure() -> None:
    decision = decide(diamond(), statuses(a=StepStatus.QUEUED), "a", 1, ok=False)
    assert decision.step_status == StepStatus.FAILED
    assert decision.run_status == RunStatus.FAILED
    assert decision.run_error == "step 'a' failed after 1 attempt"
    assert decision.skip == ("b", "c", "d")
    assert decision.cancel == ()


def test_a_failure_does_not_skip_or_cancel_finished_steps() -> None:
    given = statuses(a=StepStatus.SUCCEEDED, b=StepStatus.SUCCEEDED, c=StepStatus.QUEUED)
    decision = decide(diamond(), given, "c", 1, ok=False, error="x")
    assert "a" not in decision.skip + decision.cancel
    assert "b" not in decision.skip + decision.cancel
    assert "c" not in decision.skip + decision.cancel
    assert decision.skip == ("d",)


def test_a_step_that_fails_twice_then_succeeds_is_recorded_as_three_attempts() -> None:
    wf = diamond(retries=2, backoff=Backoff(initial=1.0, max=10.0, multiplier=2.0, jitter=0.5))
    rng = random.Random(42)
    state = statuses(a=StepStatus.SUCCEEDED, b=StepStatus.QUEUED, c=StepStatus.SUCCEEDED)
    outcomes = [False, False, True]
    decisions = []
    for attempt, ok in enumerate(outcomes, start=1):
        decision = decide(wf, state, "b", attempt, ok=ok, error=None if ok else "flaky", rng=rng)
        decisions.append(decision)
        state["b"] = decision.step_status
        for nxt in decision.dispatch:
            state[nxt] = StepStatus.QUEUED
    assert [d.step_status for d in decisions] == [StepStatus.QUEUED, StepStatus.QUEUED, StepStatus.SUCCEEDED]
    assert [d.run_status for d in decisions] == [None, None, None]
    first, second = decisions[0].retry_delay, decisions[1].retry_delay
    assert first is not None and 0.5 <= first <= 1.5
    assert second is not None and 1.0 <= second <= 3.0
    assert decisions[2].retry_delay is None
    assert decisions[2].dispatch == ("d",)
    assert state == statuses(a=StepStatus.SUCCEEDED, b=StepStatus.SUCCEEDED, c=StepStatus.SUCCEEDED,
                             d=StepStatus.QUEUED)


def test_a_step_with_two_retries_that_fails_three_times_fails_the_run() -> None:
    wf = diamond(retries=2)
    state = statuses(a=StepStatus.SUCCEEDED, b=StepStatus.QUEUED, c=StepStatus.SUCCEEDED)
    results = [decide(wf, state, "b", n, ok=False, error="flaky", rng=random.Random(n)) for n in (1, 2, 3)]
    assert [r.step_status for r in results] == [StepStatus.QUEUED, StepStatus.QUEUED, StepStatus.FAILED]
    assert results[2].run_status == RunStatus.FAILED
    assert results[2].run_error == "step 'b' failed after 3 attempts: flaky"
    assert results[2].skip == ("d",)


# -- backoff_delay -------------------------------------------------------------------------------
def test_the_backoff_is_exponential_and_capped_at_max() -> None:
    delays = [backoff_delay(NO_JITTER, n) for n in range(1, 10)]
    assert delays == [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 60.0, 60.0, 60.0]


def test_the_backoff_of_attempt_zero_or_below_is_the_initial_delay() -> None:
    assert backoff_delay(NO_JITTER, 0) == 1.0
    assert backoff_delay(NO_JITTER, -3) == 1.0


def test_a_zero_initial_backoff_means_no_wait() -> None:
    assert backoff_delay(Backoff(initial=0.0, max=0.0, jitter=0.5), 5, random.Random(1)) == 0.0


def test_a_multiplier_of_one_keeps_the_delay_constant() -> None:
    policy = Backoff(initial=3.0, max=60.0, multiplier=1.0, jitter=0.0)
    assert {backoff_delay(policy, n) for n in range(1, 50)} == {3.0}


@pytest.mark.parametrize("seed", range(20))
def test_jitter_stays_within_plus_or_minus_its_fraction(seed: int) -> None:
    policy = Backoff(initial=1.0, max=20.0, multiplier=2.0, jitter=0.3)
    rng = random.Random(seed)
    for attempt in range(1, 12):
        base = min(20.0, 2.0 ** (attempt - 1))
        delay = backoff_delay(policy, attempt, rng)
        assert base * 0.7 <= delay <= base * 1.3


def test_jitter_actually_spreads_the_delays() -> None:
    policy = Backoff(initial=10.0, max=10.0, jitter=0.5)
    rng = random.Random(3)
    delays = {backoff_delay(policy, 1, rng) for _ in range(50)}
    assert len(delays) > 40
    assert min(delays) < 8.0 < 12.0 < max(delays)


def test_the_same_seed_gives_the_same_delays() -> None:
    policy = Backoff(initial=1.0, max=60.0, jitter=0.2)
    one, two = random.Random(99), random.Random(99)
    assert [backoff_delay(policy, n, one) for n in range(1, 8)] == [backoff_delay(policy, n, two)
                                                                   for n in range(1, 8)]


def test_full_jitter_never_gives_a_negative_delay() -> None:
    policy = Backoff(initial=1.0, max=1.0, jitter=1.0)
    rng = random.Random(5)
    assert all(0.0 <= backoff_delay(policy, 1, rng) <= 2.0 for _ in range(200))


def test_a_huge_multiplier_is_capped_at_max_instead_of_overflowing() -> None:
    wf = parse({"name": "w", "steps": [{"name": "a", "task": "t", "retries": 100,
                                        "backoff": {"initial": 1, "max": 60, "multiplier": 10000,
                                                    "jitter": 0}}]}, source="wf.yaml")
    assert wf.steps["a"].max_attempts == 101
    decision = decide(wf, {"a": StepStatus.QUEUED}, "a", 100, ok=False)
    assert decision.step_status == StepStatus.QUEUED
    assert decision.retry_delay == 60.0
