"""Values too large for a message, passed by reference through the artifact store.

    executor   a step's output over ``threshold`` bytes (as JSON) is stored as an artifact (its
               msgpack encoding) and the result carries the reference in its place
    database   the step's row holds the reference (a few hundred bytes, whatever the output's size)
    executor   a step that needs it gets ``ctx.inputs`` whose values are fetched from the store when
               the step first reads them (``LazyInputs``), their checksum checked as they are read
    coordinator  a map step over such an output reads the list from the store; a map step's list of
               results over the threshold is stored the same way

Files a step writes itself (``ctx.artifacts.put``) travel as references of their own media type and
are never fetched for the step: it opens them (``StepArtifacts.open``) when it wants their bytes.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Mapping
from typing import Any, BinaryIO

import msgpack

from .artifact_refs import MSGPACK, ArtifactRef, externalize, is_ref
from .artifacts import ArtifactStore

MAX_FOLLOW_BYTES = 256 << 20  # the largest stored value a gc reads to find the references inside it


class Offload:
    """The artifact store and the size above which outputs go to it."""

    def __init__(self, store: ArtifactStore, threshold: int) -> None:
        self.store = store
        self.threshold = threshold

    def __repr__(self) -> str:
        return f"Offload({self.store.url!r}, threshold={self.threshold})"

    def outgoing(self, value: Any) -> Any:
        """``value`` itself, or (when its JSON is over the threshold) the reference to it, stored.
        TypeError or ValueError when it is not JSON-compatible data (the caller says so)."""
        size = len(json.dumps(value, allow_nan=False, separators=(",", ":")))
        return externalize(value, self.store, 0) if size > self.threshold else value

    def resolve(self, value: Any, *, limit: int | None = None) -> Any:
        """The value a stored-value reference stands for (read and checked; ArtifactTooLarge, before
        reading, above ``limit`` bytes); anything else as it is."""
        if not stored_value(value):
            return value
        ref = ArtifactRef.from_json(value)
        return msgpack.unpackb(self.store.get_bytes(ref, limit=limit), raw=False)


def stored_value(value: Any) -> bool:
    """Whether ``value`` is a reference to a value stored as an artifact (not to a file)."""
    return is_ref(value) and value.get("media_type") == MSGPACK


def holds_stored(value: Any) -> bool:
    """Whether an input is, or is a list holding, a reference to a stored value (LazyInputs fetches it)."""
    return stored_value(value) or (isinstance(value, list) and any(stored_value(v) for v in value))


class LazyInputs(dict[str, Any]):
    """A step's inputs whose values stored as artifacts (an input, or an element of an input that is a
    list: a map step's results) are fetched when first read (by key, ``get``, ``items`` or
    ``values``) and kept. Encoded as it is (a step that returns its inputs whole) or copied with
    ``dict()``, it holds the references, which stand for the same values."""

    def __init__(self, inputs: Mapping[str, Any], offload: Offload) -> None:
        super().__init__(inputs)
        self._offload = offload
        self._fetched: dict[str, Any] = {}

    def __getitem__(self, key: str) -> Any:
        if key in self._fetched:
            return self._fetched[key]
        raw = super().__getitem__(key)
        value = self._offload.resolve(raw)
        if isinstance(value, list) and any(stored_value(v) for v in value):  # a map's results, stored one by one
            value = [self._offload.resolve(v) for v in value]
        if value is not raw:
            self._fetched[key] = value
        return value

    def get(self, key: str, default: Any = None) -> Any:
        return self[key] if key in self else default

    def values(self) -> Iterator[Any]:  # type: ignore[override]
        return (self[key] for key in self)

    def items(self) -> Iterator[tuple[str, Any]]:  # type: ignore[override]
        return ((key, self[key]) for key in self)


class StepArtifacts:
    """``ctx.artifacts``: files and bytes a step stores for the steps after it, by reference.

        ref = ctx.artifacts.put(b"...", name="report.csv", media_type="text/csv")
        return {"report": ref}                          # a small map, whatever the size
        ...
        with ctx.artifacts.open(ctx.inputs["build"]["report"]) as f:   # checked as it is read
            ...
    """

    def __init__(self, offload: Offload) -> None:
        self._offload = offload

    def put(self, data: bytes | bytearray | memoryview | BinaryIO | Any, *, name: str = "",
            media_type: str | None = None) -> dict[str, Any]:
        """Store bytes, a binary stream or a file (a ``pathlib.Path``); the reference, as plain data
        to return in the step's output."""
        return self._offload.store.put(data, name=name, media_type=media_type).to_json()

    def open(self, ref: Any) -> BinaryIO:
        """A reader of a referenced artifact, its size and sha256 checked as it is read."""
        return self._offload.store.open(ArtifactRef.from_json(ref))

    def get_bytes(self, ref: Any, *, limit: int | None = None) -> bytes:
        """A referenced artifact's bytes, checked (ArtifactTooLarge above ``limit``)."""
        return self._offload.store.get_bytes(ArtifactRef.from_json(ref), limit=limit)


def keep_set(texts: Iterable[str], store: ArtifactStore) -> set[str]:
    """The digests ``texts`` (JSON from the database) refer to, and, through every stored value among
    them (read from ``store``), the ones those refer to in turn: what a gc must keep. A stored value
    that is there but cannot be read, or is over MAX_FOLLOW_BYTES, raises (ArtifactError): a gc that
    cannot see inside one must remove nothing."""
    keep: set[str] = set()
    todo: list[Any] = []
    for text in texts:
        todo.append(json.loads(text))
    while todo:
        value = todo.pop()
        if is_ref(value):
            ref = ArtifactRef.from_json(value)
            if ref.digest in keep:
                continue
            keep.add(ref.digest)
            if ref.media_type == MSGPACK and store.exists(ref):  # ArtifactTooLarge past the limit: gc stops
                todo.append(msgpack.unpackb(store.get_bytes(ref, limit=MAX_FOLLOW_BYTES), raw=False))
        elif isinstance(value, dict):
            todo.extend(value.values())
        elif isinstance(value, list):
            todo.extend(value)
    return keep
