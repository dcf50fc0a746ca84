"""Protocol version 1: the message types (payloads) and their validation; the envelope around them is
in ``envelope``.

Every MiniFlow message is a dramatiq envelope (a msgpack map with exactly the keys in
``ENVELOPE_FIELDS``) whose ``args`` hold exactly one payload map and whose ``kwargs`` are empty.
Each payload carries ``"v": 1``. Validation raises :class:`MessageRejected` with a stable code and
the name of the offending field; it never echoes values, which may be secret.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, ClassVar, Self

from .bounds import (
    MAX_ATTEMPT,
    MAX_CAP,
    MAX_EPOCH_S,
    MAX_KEY_LEN,
    MAX_MAP_INDEX,
    MAX_NAME,
    MAX_NODE,
    MAX_RUN_ID,
    MAX_TEXT,
    MAX_TRACEBACK,
    MAX_VERSION,
    MIN_EPOCH_S,
    RAW_LIMIT,
    check_attempt,
    check_bounds,
    check_name,
    check_run_id,
    check_storable,
)
from .codes import Reason
from .envelope import kind_name
from .errors import MessageRejected

# size: every message type of protocol version 1 in one module, so the wire format is read in one place
# (PROTOCOL.md follows it section by section).
PROTOCOL_VERSION = 1
SUPPORTED_VERSIONS = frozenset({1})

RESERVED_KEY_PREFIX = "message:"  # the key of a start without one is "message:<message_id>"


@dataclass(frozen=True)
class _Field:
    """A payload field: its type, and the bounds that keep it within what its column and the
    computations on it can hold (``max_len`` for text and arrays, ``low``/``high`` for numbers)."""

    kind: type | tuple[type, ...]
    required: bool = True
    default: Any = None
    max_len: int | None = None
    low: float | None = None
    high: float | None = None


class Payload:
    """Base of the payload types: ``from_payload`` validates, ``to_payload`` builds the map."""

    FIELDS: ClassVar[dict[str, _Field]]
    KIND: ClassVar[str]

    @classmethod
    def from_payload(cls, payload: Any) -> Self:
        """Validate a decoded payload map into this type; MessageRejected names the field."""
        if not isinstance(payload, dict):
            raise MessageRejected(Reason.BAD_ARGS, f"{cls.KIND} payload must be a map", "args")
        version = payload.get("v")
        if version is None:
            raise MessageRejected(Reason.MISSING_FIELD, f"{cls.KIND} has no protocol version 'v'", "v")
        if not isinstance(version, int) or isinstance(version, bool) or version not in SUPPORTED_VERSIONS:
            shown = version if isinstance(version, int) and not isinstance(version, bool) else type(version).__name__
            raise MessageRejected(Reason.UNSUPPORTED_VERSION, f"protocol version {shown} is not supported "
                                  f"(supported: {sorted(SUPPORTED_VERSIONS)})", "v")
        values = {name: cls._field(payload, name, spec) for name, spec in cls.FIELDS.items()}
        extra = sorted(set(payload) - set(cls.FIELDS) - {"v"})
        if extra:
            raise MessageRejected(Reason.UNKNOWN_FIELD, f"{cls.KIND} has unknown fields {extra}", extra[0])
        obj = cls(**values)
        obj.check()
        return obj

    @classmethod
    def _field(cls, payload: dict[str, Any], name: str, spec: _Field) -> Any:
        """One field's value: its default when absent or nil, else checked against its type."""
        if name not in payload or payload[name] is None:
            if spec.required:
                raise MessageRejected(Reason.MISSING_FIELD, f"{cls.KIND} has no {name!r}", name)
            return spec.default() if callable(spec.default) else spec.default
        value = payload[name]
        kinds = spec.kind if isinstance(spec.kind, tuple) else (spec.kind,)
        if isinstance(value, bool) and bool not in kinds:
            raise MessageRejected(Reason.BAD_TYPE, f"{cls.KIND} {name!r} must be {kind_name(spec.kind)}", name)
        if float in kinds and int not in kinds and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if not isinstance(value, kinds):
            raise MessageRejected(Reason.BAD_TYPE, f"{cls.KIND} {name!r} must be {kind_name(spec.kind)}", name)
        check_bounds(cls.KIND, name, spec, value)
        return value

    def check(self) -> None:
        """Field-level value rules beyond types; overridden per type."""

    def to_payload(self) -> dict[str, Any]:
        return {"v": PROTOCOL_VERSION, **asdict(self)}  # type: ignore[call-overload]


@dataclass(frozen=True)
class StartWorkflow(Payload):
    """Start a run of a deployed workflow. Producers publish this to ``<ns>.ingress``."""

    KIND: ClassVar[str] = "start_workflow"
    FIELDS: ClassVar[dict[str, _Field]] = {
        "workflow": _Field(str, max_len=MAX_NAME),
        "version": _Field(int, required=False, low=1, high=MAX_VERSION),
        "params": _Field(dict, required=False, default=dict),
        "idempotency_key": _Field(str, required=False),
        "priority": _Field(int, required=False, default=0),
    }
    workflow: str
    version: int | None = None
    params: dict[str, Any] = field(default_factory=dict)
    idempotency_key: str | None = None
    priority: int = 0

    def check(self) -> None:
        check_name(self.KIND, "workflow", self.workflow)
        if self.version is not None and self.version < 1:
            raise MessageRejected(Reason.BAD_VALUE, "start_workflow 'version' must be >= 1", "version")
        if self.idempotency_key is not None and not 0 < len(self.idempotency_key) <= MAX_KEY_LEN:
            raise MessageRejected(Reason.BAD_VALUE, f"start_workflow 'idempotency_key' must be 1-{MAX_KEY_LEN} "
                                  "characters", "idempotency_key")
        if self.idempotency_key is not None and self.idempotency_key.startswith(RESERVED_KEY_PREFIX):
            raise MessageRejected(Reason.BAD_VALUE, f"start_workflow 'idempotency_key' must not start with "
                                  f"{RESERVED_KEY_PREFIX!r} (reserved for starts without a key)", "idempotency_key")
        if not 0 <= self.priority <= 9:
            raise MessageRejected(Reason.BAD_VALUE, "start_workflow 'priority' must be 0-9", "priority")
        check_storable(self.params, "params")


@dataclass(frozen=True)
class CancelRun(Payload):
    """Cancel a run: no new steps are dispatched, the run ends as cancelled."""

    KIND: ClassVar[str] = "cancel_run"
    FIELDS: ClassVar[dict[str, _Field]] = {
        "run_id": _Field(str, max_len=MAX_RUN_ID),
        "reason": _Field(str, required=False, default="", max_len=MAX_TEXT),
    }
    run_id: str
    reason: str = ""

    def check(self) -> None:
        check_run_id(self.KIND, self.run_id)


@dataclass(frozen=True)
class RetryRun(Payload):
    """Re-run a failed or cancelled run from its unfinished steps, keeping succeeded outputs."""

    KIND: ClassVar[str] = "retry_run"
    FIELDS: ClassVar[dict[str, _Field]] = {
        "run_id": _Field(str, max_len=MAX_RUN_ID),
    }
    run_id: str

    def check(self) -> None:
        check_run_id(self.KIND, self.run_id)


@dataclass(frozen=True)
class StepTask(Payload):
    """One attempt of one step, sent by the coordinator to a step queue."""

    KIND: ClassVar[str] = "execute_step"
    FIELDS: ClassVar[dict[str, _Field]] = {
        "run_id": _Field(str, max_len=MAX_RUN_ID),
        "workflow": _Field(str, max_len=MAX_NAME),
        "step": _Field(str, max_len=MAX_NAME),
        "attempt": _Field(int, low=1, high=MAX_ATTEMPT),
        "task": _Field(str, max_len=MAX_NAME),
        "params": _Field(dict, required=False, default=dict),
        "config": _Field(dict, required=False, default=dict),
        "inputs": _Field(dict, required=False, default=dict),
        "timeout_s": _Field(float, required=False, low=0, high=7 * 24 * 3600),
        "secret_params": _Field(list, required=False, default=list, max_len=1000),
        "cap": _Field(str, required=False, max_len=MAX_CAP),
        "map": _Field(dict, required=False),
    }
    run_id: str
    workflow: str
    step: str
    attempt: int
    task: str
    params: dict[str, Any] = field(default_factory=dict)
    config: dict[str, Any] = field(default_factory=dict)
    inputs: dict[str, Any] = field(default_factory=dict)
    timeout_s: float | None = None
    secret_params: list[str] = field(default_factory=list)  # params whose values must never be shown
    cap: str | None = None  # the attempt's capability: returned with its progress and result (protocol/auth.py)
    map: dict[str, Any] | None = None  # an instance of a map step: {"index": i, "item": its element}

    def check(self) -> None:
        check_attempt(self.KIND, self.attempt)
        index = (self.map or {}).get("index", 0)
        if self.map is not None and (set(self.map) - {"index", "item"} or isinstance(index, bool)
                                     or not isinstance(index, int) or not 0 <= index < MAX_MAP_INDEX):
            raise MessageRejected(Reason.BAD_VALUE, f"{self.KIND} 'map' must be {{index: 0-{MAX_MAP_INDEX - 1}, "
                                  "item: any}", "map")

    @property
    def idempotency_key(self) -> str:
        """Stable across redeliveries of this attempt: use it to dedupe a step's side effects."""
        return f"{self.run_id}:{self.step}:{self.attempt}"


@dataclass(frozen=True)
class StepResult(Payload):
    """The outcome of one step attempt, sent by an executor to the results queue."""

    KIND: ClassVar[str] = "record_result"
    FIELDS: ClassVar[dict[str, _Field]] = {
        "run_id": _Field(str, max_len=MAX_RUN_ID),
        "step": _Field(str, max_len=MAX_NAME),
        "attempt": _Field(int, low=1, high=MAX_ATTEMPT),
        "ok": _Field(bool),
        "output": _Field((dict, list, str, int, float, bool, type(None)), required=False),
        "error": _Field(str, required=False, max_len=MAX_TEXT),
        "error_type": _Field(str, required=False, max_len=255),
        "node": _Field(str, required=False, default="", max_len=MAX_NODE),
        "started_at": _Field(float, low=MIN_EPOCH_S, high=MAX_EPOCH_S),
        "finished_at": _Field(float, low=MIN_EPOCH_S, high=MAX_EPOCH_S),
        "traceback": _Field(str, required=False, max_len=MAX_TRACEBACK),
        "cap": _Field(str, required=False, max_len=MAX_CAP),
    }
    run_id: str
    step: str
    attempt: int
    ok: bool
    started_at: float
    finished_at: float
    output: Any = None
    error: str | None = None
    error_type: str | None = None
    node: str = ""
    traceback: str | None = None  # of a failed attempt: masked and size-capped by the executor
    cap: str | None = None  # the capability the attempt's step message carried

    def check(self) -> None:
        check_attempt(self.KIND, self.attempt)


@dataclass(frozen=True)
class StepFinished(Payload):
    """Tells the coordinator that an attempt's outcome is recorded."""

    KIND: ClassVar[str] = "step_finished"
    FIELDS: ClassVar[dict[str, _Field]] = {
        "run_id": _Field(str, max_len=MAX_RUN_ID),
        "step": _Field(str, max_len=MAX_NAME),
        "attempt": _Field(int, low=1, high=MAX_ATTEMPT),
    }
    run_id: str
    step: str
    attempt: int

    def check(self) -> None:
        check_attempt(self.KIND, self.attempt)


PROGRESS_STATES = ("running", "declined")


@dataclass(frozen=True)
class StepProgress(Payload):
    """An executor's word on a queued attempt, sent without waiting: it is running (sent only for
    steps still running a moment after they started), or this node declined it (it lacks the task)
    and handed it back for another one. Cosmetic: losing one changes nothing but what is shown."""

    KIND: ClassVar[str] = "step_progress"
    FIELDS: ClassVar[dict[str, _Field]] = {
        "run_id": _Field(str, max_len=MAX_RUN_ID),
        "step": _Field(str, max_len=MAX_NAME),
        "attempt": _Field(int, low=1, high=MAX_ATTEMPT),
        "state": _Field(str, max_len=16),
        "node": _Field(str, required=False, default="", max_len=MAX_NODE),
        "detail": _Field(str, required=False, default="", max_len=MAX_TEXT),
        "cap": _Field(str, required=False, max_len=MAX_CAP),
    }
    run_id: str
    step: str
    attempt: int
    state: str
    node: str = ""
    detail: str = ""
    cap: str | None = None

    def check(self) -> None:
        check_attempt(self.KIND, self.attempt)
        if self.state not in PROGRESS_STATES:
            raise MessageRejected(Reason.BAD_VALUE, f"step_progress 'state' must be one of {PROGRESS_STATES}",
                                  "state")


@dataclass(frozen=True)
class DeadLetterReport(Payload):
    """A consumer rejected a message: archive it (sent by any node to the results queue)."""

    KIND: ClassVar[str] = "record_dead_letter"
    FIELDS: ClassVar[dict[str, _Field]] = {
        "queue": _Field(str, max_len=255),
        "code": _Field(str, max_len=64),
        "detail": _Field(str, max_len=MAX_TEXT),
        "message_id": _Field(str, required=False, max_len=255),
        "actor": _Field(str, required=False, max_len=255),
        "raw": _Field(bytes, required=False, default=b"", max_len=RAW_LIMIT),
        "node": _Field(str, required=False, default="", max_len=MAX_NODE),
        "about_report": _Field(bool, required=False, default=False),
    }
    queue: str
    code: str
    detail: str
    message_id: str | None = None
    actor: str | None = None
    raw: bytes = b""
    node: str = ""
    about_report: bool = False  # the rejected message was itself a report: if this one fails too, stop


HEARTBEAT_KINDS = ("worker", "timer", "api")
MAX_HEARTBEAT_QUEUES = 64
MAX_HEARTBEAT_RUNNING = 32
MIN_HEARTBEAT_S, MAX_HEARTBEAT_S = 0.1, 3600.0


@dataclass(frozen=True)
class WorkerHeartbeat(Payload):
    """A process says it is alive (every ``interval_s``), what it serves and what it runs now; the last
    one of a clean stop says ``stopping``. Executors send theirs to the results queue (they have no
    database); processes with a database write theirs directly. ``beat`` counts up from 1 per process,
    so a late, older heartbeat never overwrites a newer one (nor revives a stopped worker)."""

    KIND: ClassVar[str] = "worker_heartbeat"
    FIELDS: ClassVar[dict[str, _Field]] = {
        "node": _Field(str, max_len=MAX_NODE),
        "kind": _Field(str, max_len=16),
        "roles": _Field(list, max_len=8),
        "queues": _Field((list,), max_len=MAX_HEARTBEAT_QUEUES),  # (list,): checked in check(), queue names
        "threads": _Field(int, low=0, high=100_000),
        "pid": _Field(int, low=0, high=2**31 - 1),
        "version": _Field(str, max_len=40),
        "started_at": _Field(float, low=MIN_EPOCH_S, high=MAX_EPOCH_S),
        "interval_s": _Field(float, low=MIN_HEARTBEAT_S, high=MAX_HEARTBEAT_S),
        "beat": _Field(int, low=1, high=2**31 - 1),
        "busy": _Field(int, low=0, high=100_000),
        "running": _Field((list,), required=False, default=list, max_len=MAX_HEARTBEAT_RUNNING),  # of maps
        "stopping": _Field(bool, required=False, default=False),
    }
    node: str
    kind: str
    roles: list[str]
    queues: list[str]
    threads: int
    pid: int
    version: str
    started_at: float
    interval_s: float
    beat: int
    busy: int
    running: list[dict[str, Any]] = field(default_factory=list)
    stopping: bool = False

    def check(self) -> None:
        if not self.node:
            raise MessageRejected(Reason.BAD_VALUE, "worker_heartbeat 'node' must not be empty", "node")
        if self.kind not in HEARTBEAT_KINDS:
            raise MessageRejected(Reason.BAD_VALUE, f"worker_heartbeat 'kind' must be one of {HEARTBEAT_KINDS}",
                                  "kind")
        if not all(isinstance(r, str) and 0 < len(r) <= 16 for r in self.roles):
            raise MessageRejected(Reason.BAD_VALUE, "worker_heartbeat 'roles' must be names of at most 16 "
                                  "characters", "roles")
        if not all(isinstance(q, str) and 0 < len(q) <= 255 for q in self.queues):
            raise MessageRejected(Reason.BAD_VALUE, "worker_heartbeat 'queues' must be queue names", "queues")
        for held in self.running:
            if not isinstance(held, dict) or set(held) != {"run_id", "step", "attempt", "since"}:
                raise MessageRejected(Reason.BAD_VALUE, "worker_heartbeat 'running' entries must be maps of "
                                      "run_id, step, attempt and since", "running")
            ok = isinstance(held["run_id"], str) and len(held["run_id"]) <= MAX_RUN_ID \
                and isinstance(held["step"], str) and len(held["step"]) <= MAX_NAME \
                and isinstance(held["attempt"], int) and not isinstance(held["attempt"], bool) \
                and 1 <= held["attempt"] <= MAX_ATTEMPT \
                and isinstance(held["since"], (int, float)) and not isinstance(held["since"], bool) \
                and MIN_EPOCH_S <= held["since"] <= MAX_EPOCH_S
            if not ok:
                raise MessageRejected(Reason.BAD_VALUE, "worker_heartbeat 'running' entry out of bounds", "running")
