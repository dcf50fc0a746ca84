"""The results service: records each step attempt exactly once and tells the coordinator.

The first result of an attempt wins (a unique key on run, step, attempt); a later copy (a
redelivery, a late result from a node that was cut off) is ignored and logged. It also archives
the dead-letter reports of rejected messages.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime

from sqlalchemy.engine import Connection

from miniflow.persistence import AttemptRow, DeadLetterRow, RunRow
from miniflow.persistence import repository as repo
from miniflow.protocol import codec
from miniflow.protocol.codes import Reason
from miniflow.protocol.errors import DecodeFailed, MessageRejected
from miniflow.protocol.masking import mask_fields, mask_params
from miniflow.protocol.messages import DeadLetterReport, StepFinished, StepResult
from miniflow.protocol.names import STEP_FINISHED

from .outbox import Outbox, Outgoing
from .runs import Coordinator

logger = logging.getLogger("miniflow.coordinator")
MAX_DETAIL = 2000


class Results:
    """Record attempts and dead letters; ``coordinator`` supplies the clock, the queue names, and
    (when it runs in the same process) the advance of the run."""

    def __init__(self, coordinator: Coordinator) -> None:
        self.coordinator = coordinator

    def record(self, conn: Connection, result: StepResult, *, advance: bool = False) -> list[Outgoing]:
        """Record an attempt once; tell the coordinator only the first time.

        With ``advance`` (the coordinator runs in the same process) the run is advanced in this
        same transaction instead of through a step_finished message: one hop and one commit less
        per step, with the same fencing. The run row is locked first, so concurrent results of one
        run queue up instead of deadlocking on the attempt's foreign key."""
        now = self.coordinator.clock()
        attempt = AttemptRow(
            run_id=result.run_id, step=result.step, attempt=result.attempt, ok=result.ok,
            started_at=datetime.fromtimestamp(result.started_at, UTC),
            finished_at=datetime.fromtimestamp(result.finished_at, UTC),
            duration_ms=max(0.0, (result.finished_at - result.started_at) * 1000), recorded_at=now,
            output=result.output, error=result.error, error_type=result.error_type, node=result.node,
            traceback=result.traceback)
        row = None
        if advance:  # lock, record and read in one round trip on Postgres
            run, row, inserted = repo.record_and_lock(conn, attempt)
        else:
            run = repo.get_run(conn, result.run_id)
            if run is not None:
                self._not_a_map_step(conn, run, result.step)
            inserted = run is not None and repo.insert_attempt(conn, attempt)
        if run is None:
            raise MessageRejected(Reason.UNKNOWN_RUN, f"run {result.run_id!r} does not exist", "run_id")
        if not inserted:
            logger.info("duplicate result ignored: run %s step %s attempt %d (the first one recorded wins)",
                        result.run_id, result.step, result.attempt)
            return []
        if advance:
            return self.coordinator.advance(conn, run, row, attempt)
        event = StepFinished(result.run_id, result.step, result.attempt)
        outbox = Outbox(conn, now, self.coordinator.instrument)
        outbox.add(self.coordinator.names.coordinator, STEP_FINISHED, event.to_payload(),
                   attributes={"run_id": result.run_id, "step": result.step, "attempt": result.attempt})
        return outbox.flush()

    def _not_a_map_step(self, conn: Connection, run: RunRow, step: str) -> None:
        """A map step has no results of its own (its elements do): one naming it is forged, and is
        rejected before it is recorded (the coordinator, in the same process, rejects it too)."""
        workflow = self.coordinator.catalog.workflow(conn, run.workflow, run.version)
        spec = workflow.steps.get(step) if workflow is not None else None
        if spec is not None and spec.map is not None:
            raise MessageRejected(Reason.UNKNOWN_STEP, f"step {step!r} of run {run.id} is a map step: its elements "
                                  "have results, it has none", "step")

    def record_dead_letter(self, conn: Connection, report: DeadLetterReport) -> None:
        repo.insert_dead_letter(conn, DeadLetterRow(
            queue=report.queue[:255], code=report.code[:64], detail=report.detail[:MAX_DETAIL],
            raw=self._masked(conn, report.raw[:codec.RAW_KEEP]), created_at=self.coordinator.clock(),
            message_id=report.message_id, actor=report.actor, node=report.node))

    def _masked(self, conn: Connection, raw: bytes) -> bytes:
        """The archived copy with the values of secret params masked, where it decodes as a message
        naming its secret params (a step message) or a deployed workflow (a start). A copy that does
        not decode (cut at RAW_KEEP bytes, or not msgpack) is kept as it came."""
        try:
            fields = codec.unpack(raw)
        except DecodeFailed:
            return raw
        args = fields.get("args")
        payload = args[0] if isinstance(args, list) and len(args) == 1 and isinstance(args[0], dict) else None
        if payload is None or not isinstance(payload.get("params"), dict):
            return raw
        secrets = {s for s in payload.get("secret_params") or [] if isinstance(s, str)}
        workflow, version = payload.get("workflow"), payload.get("version")
        if isinstance(workflow, str):
            secrets |= self.coordinator.catalog.secret_params(
                conn, workflow, version if isinstance(version, int) and not isinstance(version, bool) else None)
        if not secrets:
            return raw
        masked = {**payload, "params": mask_params(payload["params"], secrets)}
        if isinstance(payload.get("inputs"), dict):
            masked["inputs"] = mask_fields(payload["inputs"], secrets)
        if isinstance(payload.get("map"), dict):  # an element of a map step
            masked["map"] = mask_fields(payload["map"], secrets)
        return codec.pack({**fields, "args": [masked]})
