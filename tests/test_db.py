"""Database.transaction: what waits for the commit runs after it, and never after a rollback."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import text

from miniflow.persistence import Database
from miniflow.persistence.db import after_commit


@pytest.fixture
def db(tmp_path: Path):
    database = Database(f"sqlite:///{tmp_path / 'tx.db'}")
    with database.transaction() as conn:
        conn.execute(text("create table t (x integer)"))
    yield database
    database.dispose()


def rows(db: Database) -> int:
    with db.connect() as conn:
        return int(conn.execute(text("select count(*) from t")).scalar_one())


def test_after_commit_callbacks_run_once_the_rows_are_committed(db):
    seen: list[int] = []
    with db.transaction() as conn:
        conn.execute(text("insert into t values (1)"))
        after_commit(conn, lambda: seen.append(rows(db)))
        assert seen == []  # not yet: the transaction is open
    assert seen == [1]  # called after the commit, which a new connection can see


def test_after_commit_callbacks_are_dropped_when_the_transaction_rolls_back(db):
    seen: list[str] = []
    with pytest.raises(RuntimeError), db.transaction() as conn:
        conn.execute(text("insert into t values (1)"))
        after_commit(conn, lambda: seen.append("called"))
        raise RuntimeError("the commit never happens")
    assert seen == [] and rows(db) == 0
    with db.transaction() as conn:  # the pooled connection carries nothing over
        conn.execute(text("insert into t values (2)"))
    assert seen == []


def test_a_failing_callback_does_not_undo_the_commit(db):
    def broken() -> None:
        raise ValueError("exporter down")

    with db.transaction() as conn:
        conn.execute(text("insert into t values (3)"))
        after_commit(conn, broken)
    assert rows(db) == 1
