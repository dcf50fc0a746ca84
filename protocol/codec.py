"""The msgpack codec of the wire: strict, bounded, and every failure one error type.

``pack`` turns a message dict into bytes; ``unpack`` turns bytes back into a dict or raises
:class:`~protocol.errors.DecodeFailed` with a stable code. Limits guard consumers against bombs: a
body over ``MAX_MESSAGE_BYTES``, containers claiming more items than the body could hold, nesting
deeper than ``MAX_DEPTH``. Only plain data passes: nil, bool, int (64-bit), finite float, str
(valid UTF-8), bin, array and map with str keys. Extension types are refused.
"""

from __future__ import annotations

import math
import threading
from typing import Any

import msgpack

from .codes import Reason
from .errors import DecodeFailed, EncodeFailed

MAX_MESSAGE_BYTES = 1024 * 1024
MAX_DEPTH = 32
MAX_ITEMS = 100_000
# The total a body may hold, whatever its size: decoding and checking one costs a few milliseconds
# at most (a 1 MiB body of empty maps would otherwise cost a tenth of a second or more).
MAX_CONTAINERS = 5_000  # maps and arrays
MAX_ELEMENTS = 100_000  # their entries and items, all together
RAW_KEEP = 4096  # bytes of a rejected body kept for the dead-letter archive


class _Budget(threading.local):
    containers = 0
    elements = 0


_budget = _Budget()


def _spend(elements: int) -> None:
    _budget.containers += 1
    _budget.elements += elements
    if _budget.containers > MAX_CONTAINERS or _budget.elements > MAX_ELEMENTS:
        raise DecodeFailed(Reason.LIMIT_EXCEEDED, f"the body holds more than {MAX_CONTAINERS} maps and arrays or "
                           f"{MAX_ELEMENTS} entries in all")


def _unique_map(pairs: list[tuple[Any, Any]]) -> dict[Any, Any]:
    _spend(len(pairs))
    result = dict(pairs)
    if len(result) != len(pairs):
        raise DecodeFailed(Reason.DUPLICATE_KEY, "a map repeats a key")
    return result


def _counted_list(items: list[Any]) -> list[Any]:
    _spend(len(items))
    return items


def _refuse_ext(code: int, data: bytes) -> Any:
    raise DecodeFailed(Reason.EXT_TYPE, f"msgpack extension type {code} is not allowed")


def pack(data: Any) -> bytes:
    """Encode plain data as msgpack (str as str, bytes as bin); tuples become arrays."""
    check_encodable(data, "message", 0)
    check_size(data, "message")
    packed: bytes = msgpack.packb(data, use_bin_type=True)
    return packed


def check_encodable(value: Any, path: str, depth: int) -> None:
    """Raise EncodeFailed (naming the path) unless ``value`` is plain data the wire can carry."""
    if depth > MAX_DEPTH:
        raise EncodeFailed(path, f"nested deeper than {MAX_DEPTH} levels")
    if value is None or isinstance(value, (bool, str, bytes)):
        return
    if isinstance(value, (int, float)):
        _check_number(value, path)
        return
    if isinstance(value, (list, tuple, dict)) and depth >= MAX_DEPTH:
        raise EncodeFailed(path, f"nested deeper than {MAX_DEPTH} levels")
    if isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            check_encodable(item, f"{path}[{i}]", depth + 1)
        return
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                raise EncodeFailed(path, f"map key {key!r} is not a string")
            check_encodable(item, f"{path}.{key}", depth + 1)
        return
    raise EncodeFailed(path, f"type {type(value).__name__} is not plain data")


def check_size(value: Any, what: str) -> None:
    """EncodeFailed when ``value`` holds more maps and arrays, or entries, than a body may."""
    containers = elements = 0
    stack = [value]
    while stack:
        item = stack.pop()
        if type(item) is dict:
            items: Any = item.values()
        elif type(item) in (list, tuple):
            items = item
        else:
            continue
        containers += 1
        elements += len(item)
        if containers > MAX_CONTAINERS or elements > MAX_ELEMENTS:
            raise EncodeFailed(what, f"it holds more than {MAX_CONTAINERS} maps and arrays or {MAX_ELEMENTS} "
                               "entries in all")
        stack.extend(v for v in items if type(v) in (dict, list, tuple))


def _check_number(value: int | float, path: str) -> None:
    if isinstance(value, int):
        if not -(2**63) <= value < 2**64:
            raise EncodeFailed(path, "integer does not fit in 64 bits")
    elif not math.isfinite(value):
        raise EncodeFailed(path, "NaN and infinity are not allowed")


def unpack(raw: bytes, *, max_bytes: int = MAX_MESSAGE_BYTES) -> dict[str, Any]:
    """Decode one msgpack map from ``raw`` or raise DecodeFailed (never anything else)."""
    keep = bytes(raw[:RAW_KEEP])
    if len(raw) > max_bytes:
        raise DecodeFailed(Reason.TOO_LARGE, f"body is {len(raw)} bytes, the limit is {max_bytes}", keep)
    _budget.containers = _budget.elements = 0
    try:
        value = msgpack.unpackb(
            raw,
            raw=False,
            strict_map_key=True,
            ext_hook=_refuse_ext,
            object_pairs_hook=_unique_map,
            list_hook=_counted_list,
            max_str_len=max_bytes,
            max_bin_len=max_bytes,
            max_array_len=min(MAX_ITEMS, len(raw)),
            max_map_len=min(MAX_ITEMS, len(raw) // 2 + 1),
            max_ext_len=len(raw),
        )
    except DecodeFailed as exc:
        exc.raw = keep
        raise
    except Exception as exc:  # noqa: BLE001 - msgpack raises many types; each becomes one DecodeFailed
        raise _decode_failure(exc, keep) from None
    if not isinstance(value, dict):
        raise DecodeFailed(Reason.NOT_A_MAP, f"top level is {type(value).__name__}, not a map", keep)
    _check_decoded(value, keep)
    return value


def _decode_failure(exc: Exception, keep: bytes) -> DecodeFailed:
    """The DecodeFailed (with its stable code) for an error msgpack raised."""
    if isinstance(exc, msgpack.ExtraData):
        return DecodeFailed(Reason.TRAILING_BYTES, "bytes follow the end of the message", keep)
    if isinstance(exc, msgpack.exceptions.StackError):
        return DecodeFailed(Reason.TOO_DEEP, "nesting exceeds the decoder's stack", keep)
    if isinstance(exc, UnicodeDecodeError):
        return DecodeFailed(Reason.INVALID_UTF8, "a string is not valid UTF-8", keep)
    if isinstance(exc, ValueError):
        text = str(exc)
        if "map key" in text:
            return DecodeFailed(Reason.NON_STR_KEY, "map keys must be strings", keep)
        if "exceeds max_" in text:
            return DecodeFailed(Reason.LIMIT_EXCEEDED, "a length header claims more than the body holds", keep)
        return DecodeFailed(Reason.MALFORMED, "not a complete msgpack value", keep)
    # msgpack may raise TypeError, OverflowError, FormatError, ...
    return DecodeFailed(Reason.MALFORMED, f"not valid msgpack ({type(exc).__name__})", keep)


def _check_decoded(root: Any, keep: bytes) -> None:
    """Walk the tree without recursion: depth limit, str keys, finite floats, no extension types.
    Only containers are stacked; scalars are checked where they stand (this runs for every body)."""
    stack: list[tuple[Any, int]] = [(root, 0)]
    while stack:
        value, depth = stack.pop()
        if depth >= MAX_DEPTH:
            raise DecodeFailed(Reason.TOO_DEEP, f"nesting exceeds {MAX_DEPTH} levels", keep)
        if type(value) is dict:
            if not all(type(key) is str for key in value):
                raise DecodeFailed(Reason.NON_STR_KEY, "map keys must be strings", keep)
            items: Any = value.values()
        else:
            items = value
        for item in items:
            kind = type(item)
            if kind is dict or kind is list:
                stack.append((item, depth + 1))
            elif kind is float and not math.isfinite(item):
                raise DecodeFailed(Reason.NON_FINITE_FLOAT, "NaN and infinity are not allowed", keep)
            elif kind is msgpack.Timestamp:
                raise DecodeFailed(Reason.EXT_TYPE, "msgpack extension type -1 (timestamp) is not allowed", keep)
