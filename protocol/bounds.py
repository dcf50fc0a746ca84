"""The bounds of payload fields: what a check accepts must fit the column it goes to and the
computation it feeds (a timestamp of 1e300 overflows a datetime, an attempt of 2**31 an int4)."""

from __future__ import annotations

import re
from typing import Any

from .codes import Reason
from .errors import MessageRejected

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,127}$")
MAX_KEY_LEN = 200
MAX_NAME = 128  # workflow, step, task and param names (their columns are 128 wide)
MAX_RUN_ID = 36  # a run id is a UUID in its 36-character text form
MAX_NODE = 255
MAX_TEXT = 4000  # free text a message carries (an error, a reason, a detail)
MAX_TRACEBACK = 16000
MAX_CAP = 128  # an attempt capability (protocol/auth.py)
MAX_MAP_INDEX = 10_000  # an instance of a map step is one of at most this many elements
MAX_ATTEMPT = 1_000_000  # far above any retry budget (100 retries, then run retries), far below int4
MIN_EPOCH_S, MAX_EPOCH_S = 946_684_800.0, 4_102_444_800.0  # 2000-01-01 .. 2100-01-01
MAX_VERSION = 2**31 - 1
RAW_LIMIT = 4096 + 64


def check_bounds(kind: str, name: str, spec: Any, value: Any) -> None:
    if spec.max_len is not None and isinstance(value, (str, bytes, list)) and len(value) > spec.max_len:
        raise MessageRejected(Reason.BAD_VALUE, f"{kind} {name!r} is longer than {spec.max_len}", name)
    if isinstance(value, (int, float)) and not isinstance(value, bool) and (
            (spec.low is not None and value < spec.low) or (spec.high is not None and value > spec.high)):
        raise MessageRejected(Reason.BAD_VALUE, f"{kind} {name!r} must be from {spec.low:g} to {spec.high:g}", name)
    if isinstance(value, list) and spec.kind is list and not all(isinstance(v, str) and len(v) <= MAX_NAME
                                                                 for v in value):
        raise MessageRejected(Reason.BAD_VALUE, f"{kind} {name!r} must hold names of at most {MAX_NAME} characters",
                              name)


def check_name(kind: str, field_name: str, value: str) -> None:
    if not _NAME_RE.fullmatch(value):
        raise MessageRejected(Reason.BAD_VALUE, f"{kind} {field_name!r} must be 1-128 characters of "
                              "letters, digits, '_', '.', '-', starting with a letter or digit", field_name)


def check_run_id(kind: str, run_id: str) -> None:
    if not 0 < len(run_id) <= MAX_RUN_ID:
        raise MessageRejected(Reason.BAD_VALUE, f"{kind} 'run_id' must be 1-{MAX_RUN_ID} characters (a run id is "
                              "a UUID)", "run_id")


def check_attempt(kind: str, attempt: int) -> None:
    if attempt < 1:
        raise MessageRejected(Reason.BAD_VALUE, f"{kind} 'attempt' must be >= 1", "attempt")


def check_storable(value: Any, path: str) -> None:
    """Params are stored as JSON: no binary values, no NUL characters (Postgres refuses them). A
    quick pass over the whole tree; only when it finds a problem, a second one names its path."""
    if _storable(value):
        return
    stack: list[tuple[Any, str]] = [(value, path)]
    while stack:
        item, where = stack.pop()
        if isinstance(item, bytes):
            raise MessageRejected(Reason.BAD_VALUE, f"{where} is binary; params must be JSON-compatible "
                                  "(send text, e.g. base64)", where.split(".")[0])
        if isinstance(item, str) and "\x00" in item:
            raise MessageRejected(Reason.BAD_VALUE, f"{where} contains a NUL character", where.split(".")[0])
        if isinstance(item, dict):
            if any("\x00" in k for k in item):
                raise MessageRejected(Reason.BAD_VALUE, f"{where} has a key with a NUL character", where.split(".")[0])
            stack.extend((v, f"{where}.{k}") for k, v in item.items())
        elif isinstance(item, list):
            stack.extend((v, f"{where}[{i}]") for i, v in enumerate(item))


def _storable(value: Any) -> bool:
    stack = [value]
    while stack:
        item = stack.pop()
        kind = type(item)
        if kind is dict:
            if any("\x00" in k for k in item):
                return False
            stack.extend(v for v in item.values() if type(v) in (dict, list, str, bytes))
        elif kind is list:
            stack.extend(v for v in item if type(v) in (dict, list, str, bytes))
        elif kind is bytes or (kind is str and "\x00" in item):
            return False
    return True


