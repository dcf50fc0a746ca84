"""The artifact store: content too large for a message (or a file a step writes), kept outside the
message and the database and passed by reference (``artifact_refs.ArtifactRef``).

Content-addressed: an artifact is named by the sha256 of its bytes, so the checksum is inherent and
identical content is stored once. A plain path or ``file://`` URL is the local file system (pathlib
and os); any other URL (``memory://name``, ``s3://bucket/prefix``, ...) goes through fsspec,
imported only then. Under the root:

    sha256/<2 hex>/<62 hex>          the content, named by its digest
    tmp/<unix time>-<16 hex>.part    a put under way, or one a crash left behind (gc removes it)

Why it is built this way:

- A put streams 1 MiB chunks into a temp file, hashing as it writes (never a second copy in
  memory), then renames the temp to its digest's name: locally ``os.replace`` after an fsync, so a
  crash never leaves part of an artifact under a digest name; on fsspec ``fs.mv``, a rename where
  the file system has one, a server-side copy and delete on object stores, which publish an object
  only once it is complete. The temp is in tmp/ as its final name is known only once it is hashed.
  A put of content already stored does the same: identical bytes replace it, refreshing its time.
- Time: gc ages an artifact by when it was last written. Locally that is its mtime, set from the
  store's clock; on fsspec the file system's own ``fs.modified`` (the rename or copy sets it), so no
  sidecar is needed (content whose file system keeps no time is never collected). A temp is aged by
  the time in its name. Reads do not refresh the time: what is in use is the caller's ``keep`` (from
  the database); ``older_than`` protects what was just written and is not referenced yet.
- File system errors become ArtifactError subclasses in one place (``ArtifactStore._translate``);
  errors and repr show the URL without its user info or query, where credentials stand.
"""

from __future__ import annotations

import hashlib
import importlib
import io
import os
import posixpath
import re
import secrets
from collections import Counter
from collections.abc import Collection, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, BinaryIO, cast
from urllib.parse import unquote, urlsplit

from miniflow.protocol.clock import Clock, as_utc, utcnow
from miniflow.protocol.errors import ConfigError

from . import artifact_refs as refs
from .artifact_refs import MSGPACK, ArtifactInfo, ArtifactRef, externalize, internalize

CHUNK = 1 << 20
_CONTENT = re.compile(r"sha256/([0-9a-f]{2})/([0-9a-f]{62})")
_TEMP = re.compile(r"tmp/(\d{1,11})-[0-9a-f]{16}\.part")


@dataclass(frozen=True)
class GcReport:
    """What a gc removed and kept (with dry_run, what it would have removed)."""

    removed: int = 0
    removed_bytes: int = 0
    kept: int = 0
    kept_bytes: int = 0
    referenced: int = 0  # of those kept, the ones in ``keep``
    missing: int = 0  # digests in ``keep`` the store does not hold
    temps_removed: int = 0
    temps_removed_bytes: int = 0
    dry_run: bool = False


def display_url(url: str) -> str:
    """A store URL as errors and repr show it: the user info (where a key or token may stand) and the
    query (where a signature may) become ***. A plain path is shown as it is."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        return url
    if "@" in rest:  # up to the last '@': a secret may hold '@', '/' or '?' itself
        rest = "***@" + rest.rsplit("@", 1)[1]
    cut = min((i for i in (rest.find("?"), rest.find("#")) if i >= 0), default=-1)
    return f"{scheme}://{rest if cut < 0 else rest[:cut] + '?***'}"


def _key(hex_digest: str) -> str:
    return f"sha256/{hex_digest[:2]}/{hex_digest[2:]}"


class _Local:
    """The local file system through pathlib and os; an artifact's time is its file's mtime."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def open_write(self, key: str) -> BinaryIO:
        (self.root / key).parent.mkdir(parents=True, exist_ok=True)
        return (self.root / key).open("xb")

    def open_read(self, key: str) -> BinaryIO:
        return (self.root / key).open("rb")

    def commit(self, temp: str, key: str, when: float) -> None:
        """The temp's bytes made durable, then renamed to the final name, dated ``when``."""
        source, target = self.root / temp, self.root / key
        _fsync(source, os.O_RDONLY)
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(source, target)
        os.utime(target, (when, when))
        _fsync(target.parent, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))

    def size(self, key: str) -> int | None:
        with suppress(FileNotFoundError):
            return (self.root / key).stat().st_size
        return None

    def remove(self, key: str) -> None:
        (self.root / key).unlink(missing_ok=True)

    def modified(self, key: str) -> datetime | None:
        with suppress(FileNotFoundError):
            return datetime.fromtimestamp((self.root / key).stat().st_mtime, UTC)
        return None

    def listing(self) -> Iterator[tuple[str, int]]:
        for top in ("sha256", "tmp"):
            for folder, _dirs, files in os.walk(self.root / top):
                for file in files:
                    size = self.size(key := Path(folder, file).relative_to(self.root).as_posix())
                    if size is not None:  # else removed since its folder was read
                        yield key, size


def _fsync(path: Path, flags: int) -> None:
    fd = os.open(path, flags)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class _Fsspec:
    """Any fsspec file system under a root path; an artifact's time is ``fs.modified``. fsspec ships
    no type information: its objects are Any at this boundary."""

    def __init__(self, fs: Any, root: str) -> None:
        self.fs = fs
        self.root = root.rstrip("/")

    def _path(self, key: str) -> str:
        return f"{self.root}/{key}"

    def open_write(self, key: str) -> BinaryIO:
        self.fs.makedirs(posixpath.dirname(self._path(key)), exist_ok=True)
        return cast(BinaryIO, self.fs.open(self._path(key), "wb"))

    def open_read(self, key: str) -> BinaryIO:
        return cast(BinaryIO, self.fs.open(self._path(key), "rb"))

    def commit(self, temp: str, key: str, when: float) -> None:
        """Renamed (or copied and deleted, on object stores); the file system dates it, not ``when``."""
        self.fs.makedirs(posixpath.dirname(self._path(key)), exist_ok=True)
        self.fs.mv(self._path(temp), self._path(key))

    def size(self, key: str) -> int | None:
        with suppress(FileNotFoundError):
            return int(self.fs.info(self._path(key))["size"])
        return None

    def remove(self, key: str) -> None:
        with suppress(FileNotFoundError):
            self.fs.rm_file(self._path(key))

    def modified(self, key: str) -> datetime | None:
        with suppress(FileNotFoundError, NotImplementedError):
            return as_utc(self.fs.modified(self._path(key)))
        return None

    def listing(self) -> Iterator[tuple[str, int]]:
        for top in ("sha256", "tmp"):
            for path, info in self.fs.find(self._path(top), detail=True).items():
                if path.startswith(f"{self.root}/"):
                    yield path[len(self.root) + 1:], int(info.get("size") or 0)


def _backend(url: str, shown: str) -> _Local | _Fsspec:
    if not url:
        raise ConfigError("the artifact store URL is empty: give a path, file:///path or e.g. s3://bucket/prefix")
    scheme, sep, _ = url.partition("://")
    if not sep:
        return _Local(Path(url).expanduser().absolute())
    if scheme.lower() == "file":
        parts = urlsplit(url)
        if parts.netloc not in ("", "localhost"):
            raise ConfigError(f"artifact store {shown}: a file:// URL names no host (file:///path)")
        return _Local(Path(unquote(parts.path)))
    try:
        fsspec = importlib.import_module("fsspec")
    except ImportError:
        raise ConfigError(f"artifact store {shown}: {scheme}:// URLs need fsspec (pip install fsspec)") from None
    try:  # `from None` below: fsspec's own message may quote the URL, credentials and all
        fs, root = fsspec.url_to_fs(url)
    except ImportError:
        known = importlib.import_module("fsspec.registry").known_implementations.get(scheme, {})
        package = str(known.get("class", "")).split(".")[0] or f"an fsspec implementation of {scheme}://"
        raise ConfigError(f"artifact store {shown}: {scheme}:// needs {package}, which cannot be imported "
                          f"(pip install {package})") from None
    except (ValueError, TypeError):
        raise ConfigError(f"artifact store {shown}: {scheme!r} is not a file system fsspec knows (use a path, "
                          "file:///path, memory://name or s3://bucket/prefix)") from None
    return _Fsspec(fs, str(root))


class ArtifactStore:
    """Content-addressed artifacts under one root URL (see the module docstring). ``max_bytes`` caps
    one artifact; ``clock`` dates local writes and temp files (gc ages them by it)."""

    def __init__(self, url: str | os.PathLike[str], *, max_bytes: int | None = None, clock: Clock = utcnow) -> None:
        text = os.fspath(url)
        if max_bytes is not None and (isinstance(max_bytes, bool) or max_bytes <= 0):
            raise ValueError(f"max_bytes must be a positive number of bytes or None, not {max_bytes!r}")
        self.url = display_url(text)  # never the credentials
        self.max_bytes = max_bytes
        self._clock = clock
        self._backend = _backend(text, self.url)

    def __repr__(self) -> str:
        return f"ArtifactStore({self.url!r})"

    @contextmanager
    def _translate(self, doing: str, digest: str | None = None) -> Iterator[None]:
        """The one place file system errors become MiniFlow's. The cause is chained for the local file
        system only: an fsspec error may quote a path that holds credentials."""
        try:
            yield
        except OSError as exc:
            cause = exc if isinstance(self._backend, _Local) else None
            if isinstance(exc, FileNotFoundError) and digest is not None:
                raise refs.ArtifactNotFound(digest, self.url) from cause
            raise refs.ArtifactStoreUnavailable(f"artifact store {self.url}: {doing} failed "
                                                f"({type(exc).__name__}: {exc.strerror or 'no detail'})") from cause

    def put(self, data: bytes | bytearray | memoryview | BinaryIO | os.PathLike[str], *, name: str = "",
            media_type: str | None = None) -> ArtifactRef:
        """Store bytes, a binary stream (read to its end) or a file by path (its file name is then the
        default name). Content already stored is stored once: a put of it refreshes its time."""
        if isinstance(data, str):
            raise TypeError("put takes bytes, a binary stream or a pathlib.Path, not str (encode text first)")
        if isinstance(data, os.PathLike):
            with open(data, "rb") as file:
                return self.put(file, name=name or Path(data).name, media_type=media_type)
        refs.check_name(name)
        refs.check_media_type(media_type)
        source = io.BytesIO(data) if isinstance(data, bytes | bytearray | memoryview) else data
        return self._put(source, name, media_type)

    def _put(self, source: BinaryIO, name: str, media_type: str | None) -> ArtifactRef:
        when = self._clock().timestamp()
        temp = f"tmp/{int(when)}-{secrets.token_hex(8)}.part"
        try:
            with self._translate("storing an artifact"):
                digest, size = self._write(source, temp, name)
                ref = ArtifactRef(f"sha256:{digest}", size, name, media_type)
                self._backend.commit(temp, _key(ref.hex), when)
        except BaseException:
            with suppress(OSError):
                self._backend.remove(temp)
            raise
        return ref

    def _write(self, source: BinaryIO, temp: str, name: str) -> tuple[str, int]:
        hasher, size = hashlib.sha256(), 0
        with self._backend.open_write(temp) as out:
            while chunk := source.read(CHUNK):
                size += len(chunk)
                if self.max_bytes is not None and size > self.max_bytes:
                    raise refs.ArtifactTooLarge(f"artifact {name or '(unnamed)'!r} is larger than the artifact "
                                                f"store's limit of {self.max_bytes} bytes (max_bytes)")
                hasher.update(chunk)
                out.write(chunk)
        return hasher.hexdigest(), size

    def open(self, ref: ArtifactRef) -> BinaryIO:
        """A reader of the artifact that checks its sha256 and size as it is read (ArtifactCorrupt,
        naming the digest); the check is complete once ``ref.size`` bytes or the end have been read."""
        with self._translate("opening an artifact", ref.digest):
            return refs.verifying(self._backend.open_read(_key(ref.hex)), ref, CHUNK)

    def get_bytes(self, ref: ArtifactRef, *, limit: int | None = None) -> bytes:
        """The artifact's bytes, checked; ArtifactTooLarge, before any read, when it is above ``limit``."""
        if limit is not None and ref.size > limit:
            raise refs.ArtifactTooLarge(f"artifact {ref.digest} is {ref.size} bytes, more than the limit of {limit}")
        with self.open(ref) as reader:
            return reader.read()

    def exists(self, ref: ArtifactRef | str) -> bool:
        """Whether the store holds the artifact (a reference or a digest)."""
        key = _key(_hex(ref))
        with self._translate("looking up an artifact"):
            return self._backend.size(key) is not None

    def delete(self, ref: ArtifactRef | str) -> bool:
        """Remove an artifact (a reference or a digest); whether it was there."""
        key = _key(_hex(ref))
        with self._translate("deleting an artifact"):
            existed = self._backend.size(key) is not None
            self._backend.remove(key)
        return existed

    def iter_artifacts(self) -> Iterator[ArtifactInfo]:
        """Every stored artifact, in no particular order (temp files and foreign ones are skipped)."""
        with self._translate("listing artifacts"):
            for key, size in self._backend.listing():
                if match := _CONTENT.fullmatch(key):
                    yield ArtifactInfo(f"sha256:{match[1]}{match[2]}", size, self._backend.modified(key))

    def gc(self, *, older_than: timedelta, keep: Collection[str] = (), now: datetime | None = None,
           dry_run: bool = False) -> GcReport:
        """Remove the artifacts last written before ``now - older_than`` whose digest is not in
        ``keep`` (those still referenced), and the temp files of failed puts older than that. Every
        digest in ``keep`` is checked first: a malformed one would otherwise protect nothing."""
        if older_than < timedelta(0):
            raise ValueError(f"older_than must not be negative, not {older_than}")
        keep_hex = {refs.check_digest(digest, "keep") for digest in keep}
        moment = now or self._clock()
        if moment.tzinfo is None:
            raise ValueError("now must be an aware datetime (e.g. in UTC)")
        cutoff = moment - older_than
        counts: Counter[str] = Counter()
        with self._translate("collecting artifacts"):
            for key, size in self._backend.listing():
                self._collect(key, size, keep_hex, cutoff, dry_run, counts)
        counts["missing"] = len(keep_hex) - counts["referenced"]
        return GcReport(**counts, dry_run=dry_run)

    def _collect(self, key: str, size: int, keep: set[str], cutoff: datetime, dry_run: bool,
                 counts: Counter[str]) -> None:
        temp, content = _TEMP.fullmatch(key), _CONTENT.fullmatch(key)
        if temp is not None or content is None:  # a temp file, or no file of the store's (left alone)
            if temp is not None and datetime.fromtimestamp(int(temp[1]), UTC) <= cutoff:
                counts.update(temps_removed=1, temps_removed_bytes=size)
                if not dry_run:
                    self._backend.remove(key)
            return
        referenced = content[1] + content[2] in keep
        when = None if referenced else self._backend.modified(key)
        if referenced or when is None or when > cutoff:
            counts.update(kept=1, kept_bytes=size, referenced=int(referenced))
            return
        counts.update(removed=1, removed_bytes=size)
        if not dry_run:
            self._backend.remove(key)


def _hex(ref: ArtifactRef | str) -> str:
    return ref.hex if isinstance(ref, ArtifactRef) else refs.check_digest(ref)


__all__ = ["MSGPACK", "ArtifactInfo", "ArtifactRef", "ArtifactStore", "GcReport", "display_url", "externalize",
           "internalize"]
