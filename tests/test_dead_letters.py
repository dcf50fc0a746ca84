"""The dead-letter archive: a rejected report is archived once and never loops; old letters are pruned."""

from __future__ import annotations

import logging
from datetime import timedelta

import pytest

from miniflow.ops.embedded import EmbeddedEngine
from miniflow.ops.polling import poll_until
from miniflow.persistence import DeadLetterRow
from miniflow.persistence import repository as repo
from miniflow.protocol import codec
from miniflow.protocol.clock import utcnow
from miniflow.protocol.codes import Reason
from miniflow.protocol.envelope import envelope
from miniflow.protocol.messages import DeadLetterReport
from miniflow.protocol.names import RECORD_DEAD_LETTER

from .forge import core_body


def letters(engine: EmbeddedEngine) -> list[DeadLetterRow]:
    engine.settle()
    with engine.db.connect() as conn:
        return repo.list_dead_letters(conn, 100)


@pytest.mark.parametrize("signed, code", [(True, Reason.BAD_TYPE), (False, Reason.UNSIGNED)])
def test_a_report_that_fails_its_checks_is_archived_once_as_a_rejected_report(engine, signed, code) -> None:
    bad = {**DeadLetterReport(queue="x", code="c", detail="not a real report").to_payload(), "code": 7}
    fields = envelope(engine.names.results, RECORD_DEAD_LETTER, bad)
    engine.broker.put_raw(engine.names.results, core_body(engine.auth, fields) if signed else codec.pack(fields))
    [letter] = poll_until(lambda: letters(engine) or None, timeout=30, what="the bad report archived")
    assert letter.actor == RECORD_DEAD_LETTER
    assert letter.code == code
    engine.settle()
    assert len(letters(engine)) == 1  # archiving it made no further letters


def test_a_bad_report_about_a_rejected_report_is_logged_and_not_archived(engine, caplog) -> None:
    bad = {**DeadLetterReport(queue="x", code="c", detail="loop bait", about_report=True).to_payload(), "code": 7}
    caplog.set_level(logging.WARNING)
    engine.broker.put_raw(engine.names.results,
                          core_body(engine.auth, envelope(engine.names.results, RECORD_DEAD_LETTER, bad)))

    def logged() -> bool:
        return any("not archiving the rejection" in r.getMessage() for r in caplog.records)

    poll_until(logged, timeout=30, what="the refusal to archive logged")
    assert letters(engine) == []


@pytest.mark.parametrize("age_days, kept", [(31, False), (29, True)])
def test_the_reconciler_prunes_letters_past_their_retention(engine, age_days, kept) -> None:
    with engine.db.transaction() as conn:
        repo.insert_dead_letter(conn, DeadLetterRow(queue="q", code="c", detail="d", raw=b"",
                                                    created_at=utcnow() - timedelta(days=age_days)))
    reconciler = engine.node.reconciler
    assert reconciler is not None
    reconciler.run_once()
    assert (len(letters(engine)) == 1) is kept
