"""The outage tracker: one line when a dependency goes away, one reminder a minute, one line when back."""

from __future__ import annotations

import logging

import pytest

from miniflow.actors.outages import BROKER, DATABASE, OutageFilter, Outages, dependency_of
from miniflow.protocol.errors import BrokerUnavailable, DatabaseUnavailable


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def tracked(caplog: pytest.LogCaptureFixture) -> tuple[Outages, Clock, pytest.LogCaptureFixture]:
    clock = Clock()
    outages = Outages(clock=clock, log=logging.getLogger("miniflow.outage.test"))
    outages.watch(BROKER, "amqp://guest:pw@broker.example:5672/%2F", 5672)
    caplog.set_level(logging.WARNING, logger="miniflow.outage.test")
    return outages, clock, caplog


def test_a_thousand_failures_in_ten_minutes_make_one_line_ten_reminders_and_one_back(tracked) -> None:
    outages, clock, caplog = tracked
    for _ in range(1000):
        outages.failed(BROKER, "ConnectionRefusedError")
        clock.now += 0.6
    outages.recovered(BROKER)
    lines = [r.getMessage() for r in caplog.records]
    where = "broker amqp://guest:***@broker.example:5672/%2F"
    assert lines[0].startswith(f"{where} is unreachable (ConnectionRefusedError)")
    assert sum("still unreachable" in line for line in lines) == 9  # at most one a minute over 600 s
    assert lines[-1].startswith(f"{where} is back after 600 s")
    assert len(lines) == 11
    assert all("pw" not in line for line in lines)


def test_recovering_what_was_never_down_says_nothing(tracked) -> None:
    outages, _, caplog = tracked
    outages.recovered(BROKER)
    outages.recovered(DATABASE)
    assert caplog.records == []


def test_connection_errors_are_told_apart_from_other_errors() -> None:
    assert dependency_of(BrokerUnavailable("x")) == BROKER
    assert dependency_of(DatabaseUnavailable("x")) == DATABASE
    try:
        try:
            raise ConnectionRefusedError
        except ConnectionRefusedError as exc:
            raise DatabaseUnavailable("down") from exc
    except DatabaseUnavailable as wrapped:
        assert dependency_of(wrapped) == DATABASE
    assert dependency_of(ValueError("a bug")) is None


def test_the_filter_folds_pika_noise_into_the_tracker_and_drops_it(tracked) -> None:
    outages, _, caplog = tracked
    noise = logging.LogRecord("pika.adapters.blocking_connection", logging.ERROR, __file__, 1,
                              "Connection workflow failed", None, None)
    other = logging.LogRecord("miniflow.actors", logging.WARNING, __file__, 1, "a real warning", None, None)
    kept = OutageFilter(outages)
    assert kept.filter(noise) is False and kept.filter(other) is True
    assert outages.is_down(BROKER)
    outages.recovered(BROKER)  # (and its probe thread ends)
    assert OutageFilter(Outages()).filter(noise) is False  # a one-shot command: dropped, nothing tracked


def test_stale_connections_failing_right_after_a_recovery_are_not_a_new_outage(tracked) -> None:
    outages, clock, caplog = tracked
    outages.failed(BROKER, "ConnectionRefusedError")
    clock.now += 30
    outages.recovered(BROKER)
    clock.now += 1
    outages.failed(BROKER, "ConnectionResetError")  # an old channel, replaced on its next use
    outages.recovered(BROKER)
    assert [r.getMessage().split(" is ")[1][:4] for r in caplog.records] == ["unre", "back"]
    clock.now += 60
    outages.failed(BROKER, "ConnectionRefusedError")  # much later: a new outage again
    assert outages.is_down(BROKER)
    outages.recovered(BROKER)
