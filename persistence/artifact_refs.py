"""References to artifacts, as they travel inside step outputs and messages, and the artifact errors.

An artifact is content kept outside the message and the database (``persistence.artifacts`` stores
it, named by its sha256); an output or input holds only a small reference to it:

    {"$artifact": "sha256:<64 hex>", "size": 1234, "name": "report.csv", "media_type": "text/csv"}

A reference comes from other processes, so ``ArtifactRef.from_json`` trusts nothing in it: every
field is checked for its type and form. The digest is the only field that ever becomes a storage
key, and only as exactly ``sha256:`` and 64 lowercase hex digits, so no ``../`` or odd key can reach
a path. The name is for display (and for the file an executor may later materialise): it is never
used to store, and it holds no path separator or control character all the same.

Here too: the reader that checks bytes against their reference as they are read (``verifying``), and
the threshold helpers that put a value too large for a message into the store and back
(``externalize``, ``internalize``).

The errors are the ArtifactError branch of protocol/errors.py's tree.

No message ever holds an artifact's content; a rejected value is shown only as a short repr.
"""

from __future__ import annotations

import hashlib
import io
import re
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any, BinaryIO

import msgpack

from miniflow.protocol.errors import (
    ArtifactCorrupt,
    ArtifactError,
    ArtifactNotFound,
    ArtifactRefInvalid,
    ArtifactStoreUnavailable,
    ArtifactTooLarge,
)

if TYPE_CHECKING:
    from _typeshed import WriteableBuffer

    from .artifacts import ArtifactStore

MARKER = "$artifact"  # the key that makes a JSON map a reference; it holds the digest
MAX_NAME = 255
MAX_SIZE = 1 << 40  # 1 TiB: a reference claiming more is broken or hostile
_DIGEST = re.compile(r"sha256:([0-9a-f]{64})")
_BAD_NAME = re.compile(r"[/\\\x00-\x1f\x7f]")
_TOKEN = r"[A-Za-z0-9][A-Za-z0-9!#$&^_.+\-]{0,126}"
_MEDIA_TYPE = re.compile(rf"{_TOKEN}/{_TOKEN}(?: *;[ -~]*)?")
_FIELDS = frozenset({MARKER, "size", "name", "media_type"})
MSGPACK = "application/x-msgpack"  # the media type of a value that externalize stored


def _show(text: str) -> str:
    """A rejected string, short and escaped (a message may be hostile: no newlines into a log)."""
    return repr(text[:80]) + ("..." if len(text) > 80 else "")


def check_digest(value: object, field: str = "digest") -> str:
    """The 64 hex digits of a valid digest. Every digest passes here before it becomes a storage
    key, so a key is never anything but hex."""
    if not isinstance(value, str):
        raise ArtifactRefInvalid(field, f"must be a string 'sha256:<64 hex digits>', not {type(value).__name__}")
    match = _DIGEST.fullmatch(value)
    if match is None:
        raise ArtifactRefInvalid(field, f"must be 'sha256:' and 64 lowercase hex digits, not {_show(value)}")
    return match[1]


def check_size(value: object) -> int:
    # bool is an int to Python, but `"size": true` is no size.
    if isinstance(value, bool) or not isinstance(value, int):
        raise ArtifactRefInvalid("size", f"must be an integer number of bytes, not {type(value).__name__}")
    if not 0 <= value <= MAX_SIZE:
        shown = value if value.bit_length() < 64 else "a larger number"
        raise ArtifactRefInvalid("size", f"must be from 0 to {MAX_SIZE} bytes (1 TiB), not {shown}")
    return value


def check_name(value: object) -> str:
    """A display name: at most 255 characters, a plain file name (it is never a storage path, but
    an executor may one day write a file by it)."""
    if not isinstance(value, str):
        raise ArtifactRefInvalid("name", f"must be a string, not {type(value).__name__}")
    if len(value) > MAX_NAME:
        raise ArtifactRefInvalid("name", f"must be at most {MAX_NAME} characters, not {len(value)}")
    if value in (".", "..") or _BAD_NAME.search(value):
        raise ArtifactRefInvalid("name", f"must be a plain file name (no '/', '\\', control character, '.' or "
                                         f"'..'), not {_show(value)}")
    return value


def check_media_type(value: object) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise ArtifactRefInvalid("media_type", f"must be a string or null, not {type(value).__name__}")
    if len(value) > 255 or not _MEDIA_TYPE.fullmatch(value):
        raise ArtifactRefInvalid("media_type", f"must be a media type such as 'text/csv', not {_show(value)}")
    return value


@dataclass(frozen=True)
class ArtifactRef:
    """A stored artifact: its digest (``sha256:<64 hex>``), size in bytes, display name and media
    type. Checked when made, so an ArtifactRef in hand is always a valid one."""

    digest: str
    size: int
    name: str = ""
    media_type: str | None = None

    def __post_init__(self) -> None:
        check_digest(self.digest)
        check_size(self.size)
        check_name(self.name)
        check_media_type(self.media_type)

    @property
    def hex(self) -> str:
        """The 64 hex digits of the digest."""
        return self.digest[len("sha256:"):]

    def to_json(self) -> dict[str, Any]:
        """The reference as plain data, to travel inside a msgpack or JSON output."""
        return {MARKER: self.digest, "size": self.size, "name": self.name, "media_type": self.media_type}

    @classmethod
    def from_json(cls, value: object) -> ArtifactRef:
        """A reference from plain data that may be hostile: ArtifactRefInvalid names what is wrong."""
        if not isinstance(value, dict):
            raise ArtifactRefInvalid("reference", f"must be a map with a {MARKER!r} key, not {type(value).__name__}")
        unknown = [key for key in value if key not in _FIELDS]
        if unknown:
            shown = ", ".join(_show(str(key)) for key in unknown[:5])
            raise ArtifactRefInvalid("reference", f"has unknown field(s) {shown} (known: {', '.join(sorted(_FIELDS))})")
        for key in (MARKER, "size"):
            if key not in value:
                raise ArtifactRefInvalid("digest" if key == MARKER else key, f"is missing (the {key!r} key)")
        return cls(value[MARKER], value["size"], value.get("name", ""), value.get("media_type"))


@dataclass(frozen=True)
class ArtifactInfo:
    """One stored artifact as the store's listing sees it (its name and media type live in its references)."""

    digest: str
    size: int
    modified: datetime | None  # when it was last written; None: the file system keeps no time (it is kept)


def is_ref(value: object) -> bool:
    """Whether a JSON value is meant as an artifact reference (a map with the marker key); whether it
    is a valid one is ``ArtifactRef.from_json``'s to say."""
    return isinstance(value, dict) and MARKER in value


class _Verifying(io.RawIOBase):
    """Hashes an artifact's bytes as they are read: ArtifactCorrupt as soon as they cannot be the
    artifact's (more than its size, or all of it with another hash), and at an early end."""

    def __init__(self, raw: BinaryIO, ref: ArtifactRef) -> None:
        self._raw, self._ref = raw, ref
        self._hash = hashlib.sha256()
        self._count = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: WriteableBuffer) -> int:
        view = memoryview(buffer).cast("B")
        if not len(view):
            return 0
        data = self._raw.read(len(view))
        self._count += len(data)
        if self._count > self._ref.size:
            raise ArtifactCorrupt(self._ref.digest, f"it holds more than the {self._ref.size} bytes of its reference")
        self._hash.update(data)
        if not data or self._count == self._ref.size:  # the end, or all of it: check now
            self._check()
        view[:len(data)] = data
        return len(data)

    def _check(self) -> None:
        if self._count < self._ref.size:
            raise ArtifactCorrupt(self._ref.digest, f"it holds {self._count} bytes, its reference says "
                                                    f"{self._ref.size}")
        if self._hash.hexdigest() != self._ref.hex:
            raise ArtifactCorrupt(self._ref.digest, "its content does not match its sha256 digest")

    def close(self) -> None:
        try:
            self._raw.close()
        finally:
            super().close()


def verifying(raw: BinaryIO, ref: ArtifactRef, buffer_size: int = 1 << 20) -> BinaryIO:
    """``raw`` (the stored bytes of ``ref``), read through a sha256 and size check. The check is
    complete once ``ref.size`` bytes, or the end, have been read; it never names the content."""
    return io.BufferedReader(_Verifying(raw, ref), buffer_size)


def externalize(value: Any, store: ArtifactStore, threshold_bytes: int) -> Any:
    """The value itself when its msgpack encoding is at most ``threshold_bytes``; else that encoding,
    stored as an artifact, and the reference (as plain data) to travel in the value's place."""
    encoded: bytes = msgpack.packb(value, use_bin_type=True)
    if len(encoded) <= threshold_bytes:
        return value
    return store.put(encoded, media_type=MSGPACK).to_json()


def internalize(value: Any, store: ArtifactStore) -> Any:
    """The inverse of ``externalize``: the value a msgpack reference stands for, its checksum checked.
    Anything else (plain values, references to files, fetched lazily) is returned as it is."""
    if not is_ref(value):
        return value
    ref = ArtifactRef.from_json(value)
    if ref.media_type != MSGPACK:
        return value
    return msgpack.unpackb(store.get_bytes(ref), raw=False)


__all__ = [
    "MARKER", "MAX_NAME", "MAX_SIZE", "MSGPACK", "ArtifactCorrupt", "ArtifactError", "ArtifactInfo", "ArtifactNotFound",
    "ArtifactRef",
    "ArtifactRefInvalid", "ArtifactStoreUnavailable", "ArtifactTooLarge", "check_digest", "check_media_type",
    "check_name", "check_size", "externalize", "internalize", "is_ref", "verifying",
]
