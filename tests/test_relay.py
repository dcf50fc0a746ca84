"""The outbox sweeper: rows a dead publisher left behind go out in short batches, none twice."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from dramatiq.errors import BrokerConnectionError

from miniflow.actors.broker import declare_topology, make_broker
from miniflow.actors.relay import PUBLISHERS, SPREAD_FROM, SWEEP_BATCH, Relay
from miniflow.coordinator import Outbox, Outgoing
from miniflow.persistence import Database
from miniflow.persistence import repository as repo
from miniflow.protocol import codec
from miniflow.protocol.clock import utcnow
from miniflow.protocol.errors import BrokerUnavailable
from miniflow.protocol.messages import StepFinished
from miniflow.protocol.names import STEP_FINISHED, QueueNames


def test_a_backlog_of_stale_rows_drains_in_one_sweep_in_batches(tmp_path: Path):
    names = QueueNames("sweep")
    db = Database(f"sqlite:///{tmp_path / 'relay.db'}")
    db.upgrade()
    broker = make_broker(None, names)
    declare_topology(broker, names)
    try:
        count = SWEEP_BATCH * 2 + 7
        old = utcnow() - timedelta(minutes=5)
        with db.transaction() as conn:
            outbox = Outbox(conn, old)
            for i in range(count):
                outbox.add(names.coordinator, STEP_FINISHED, StepFinished(f"run-{i}", "a", 1).to_payload())
            outbox.flush()
            fresh = Outbox(conn, utcnow())  # not stale: its publisher may still be at it
            fresh.add(names.coordinator, STEP_FINISHED, StepFinished("run-new", "a", 1).to_payload())
            fresh.flush()
        commits: list[str] = []
        from sqlalchemy import event

        event.listen(db.engine, "commit", lambda conn: commits.append("commit"))
        relay = Relay(broker, db, stale_after_s=10)
        assert relay.sweep_once() == count
        assert len(commits) == 3  # three short transactions, not one long one
        assert broker.queues[names.coordinator].qsize() == count
        with db.connect() as conn:
            assert repo.count_outbox(conn) == 1  # only the fresh row is left
        assert relay.sweep_once() == 0
    finally:
        broker.close()
        db.dispose()


def test_a_relay_sweeps_only_its_own_namespace_of_a_shared_database(tmp_path: Path):
    """Namespaces may share a database; a row must go out signed as its own namespace's core signs
    it (a step queue of another namespace is not a step queue to this one), so each relay sweeps
    only its own. `_` in a namespace is not a wildcard."""
    mine, other, lookalike = QueueNames("ns_a"), QueueNames("ns_a_b"), QueueNames("nsXa")
    db = Database(f"sqlite:///{tmp_path / 'shared.db'}")
    db.upgrade()
    broker = make_broker(None, mine)
    for names in (mine, other, lookalike):
        declare_topology(broker, names)
    try:
        old = utcnow() - timedelta(minutes=5)
        with db.transaction() as conn:
            outbox = Outbox(conn, old)
            for names in (mine, other, lookalike):
                payload = StepFinished(f"run-{names.namespace}", "a", 1).to_payload()
                outbox.add(names.coordinator, STEP_FINISHED, payload)
            outbox.flush()
        relay = Relay(broker, db, stale_after_s=10, namespace=mine.namespace)
        assert relay.sweep_once() == 1
        assert broker.queues[mine.coordinator].qsize() == 1
        assert broker.queues[other.coordinator].qsize() == 0 and broker.queues[lookalike.coordinator].qsize() == 0
        with db.connect() as conn:
            assert repo.count_outbox(conn) == 2  # the others wait for their own namespace's relays
    finally:
        broker.close()
        db.dispose()


@contextmanager
def relay_on_stub(tmp_path: Path, names: QueueNames) -> Iterator[tuple[Database, Any, Relay]]:
    """A migrated SQLite database, a stub broker with the namespace's queues, and a relay on them."""
    db = Database(f"sqlite:///{tmp_path / 'relay.db'}")
    db.upgrade()
    broker = make_broker(None, names)
    declare_topology(broker, names)
    relay = Relay(broker, db)
    try:
        yield db, broker, relay
    finally:
        relay.stop()
        broker.close()
        db.dispose()


def long_batch(db: Database, names: QueueNames, count: int) -> list[Outgoing]:
    with db.transaction() as conn:
        outbox = Outbox(conn, utcnow())
        for i in range(count):
            outbox.add(names.coordinator, STEP_FINISHED, StepFinished(f"run-{i}", "a", 1).to_payload())
        return outbox.flush()


def test_a_long_batch_goes_out_over_several_publisher_threads_each_message_once(tmp_path: Path):
    names = QueueNames("spread")
    threads: set[str] = set()
    with relay_on_stub(tmp_path, names) as (db, broker, relay):
        enqueue = broker.enqueue

        def recording(message, *, delay=None):  # noqa: ANN001, ANN202
            threads.add(threading.current_thread().name)
            return enqueue(message, delay=delay)

        broker.enqueue = recording
        items = long_batch(db, names, SPREAD_FROM * 3)
        relay.publish(items)
        queue = broker.queues[names.coordinator]
        sent = [queue.get_nowait() for _ in range(queue.qsize())]
        assert sorted(codec.unpack(m)["message_id"] for m in sent) == sorted(i.message_id for i in items)
        # on publisher threads (up to PUBLISHERS of them: an idle one takes the next part)
        assert 1 <= len(threads) <= PUBLISHERS and all(t.startswith("miniflow-publisher") for t in threads)
        assert relay.delete_published() == len(items)  # all confirmed, all rows deleted
        threads.clear()
        relay.publish(long_batch(db, names, SPREAD_FROM - 1))  # a short one: this thread, in order
        assert threads == {threading.current_thread().name}


def test_a_part_of_a_long_batch_that_fails_raises_and_leaves_every_row_for_the_sweeper(tmp_path: Path):
    names = QueueNames("spread")
    with relay_on_stub(tmp_path, names) as (db, broker, relay):
        items = long_batch(db, names, SPREAD_FROM * 2)
        failing = items[-1].message_id
        enqueue = broker.enqueue

        def flaky(message, *, delay=None):  # noqa: ANN001, ANN202
            if message.message_id == failing:
                raise BrokerConnectionError("connection reset")
            return enqueue(message, delay=delay)

        broker.enqueue = flaky
        with pytest.raises(BrokerUnavailable, match=failing):
            relay.publish(items)
        assert relay.delete_published() == 0
        with db.connect() as conn:
            assert repo.count_outbox(conn) == len(items)  # the sweeper sends them when stale; consumers dedupe


def test_a_long_batch_published_while_the_relay_stops_goes_out_on_the_callers_thread(tmp_path: Path):
    names = QueueNames("spread")
    with relay_on_stub(tmp_path, names) as (db, broker, relay):
        relay.stop()  # a worker's handlers may still be at work while its background threads stop
        items = long_batch(db, names, SPREAD_FROM)
        relay.publish(items)
        assert broker.queues[names.coordinator].qsize() == len(items)
        assert relay._publishers is None
