"""The outbox sweeper: rows a dead publisher left behind go out in short batches, none twice."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

from miniflow.actors.broker import declare_topology, make_broker
from miniflow.actors.relay import SWEEP_BATCH, Relay
from miniflow.coordinator import Outbox
from miniflow.persistence import Database
from miniflow.persistence import repository as repo
from miniflow.protocol.clock import utcnow
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
