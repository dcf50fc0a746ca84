"""The artifact store: content-addressed, checked on every read, collected by age unless referenced,
on the local file system and on fsspec's memory:// (no service needed, no sleeps: time is a clock
we move)."""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import io
import traceback
import tracemalloc
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import msgpack
import pytest

from miniflow.persistence.artifact_refs import (
    MAX_SIZE,
    ArtifactCorrupt,
    ArtifactNotFound,
    ArtifactRefInvalid,
    ArtifactStoreUnavailable,
    ArtifactTooLarge,
    is_ref,
)
from miniflow.persistence.artifacts import (
    CHUNK,
    MSGPACK,
    ArtifactRef,
    ArtifactStore,
    GcReport,
    display_url,
    externalize,
    internalize,
)
from miniflow.protocol.errors import ConfigError, MiniFlowError

T0 = datetime(2026, 11, 26, 12, 0, tzinfo=UTC)
DAY = timedelta(days=1)
GOOD = "sha256:" + "ab" * 32


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def store(tmp_path: Path, clock: Clock) -> ArtifactStore:
    return ArtifactStore(tmp_path / "artifacts", clock=clock)


@pytest.fixture
def memory_url() -> Iterator[str]:
    """A memory:// root of this test's own (fsspec's memory file system is one per process); removed after."""
    name = f"miniflow-test-{uuid.uuid4().hex}"
    yield f"memory://{name}"
    fs = importlib.import_module("fsspec").filesystem("memory")
    if fs.exists(f"/{name}"):
        fs.rm(f"/{name}", recursive=True)


def stored_file(root: Path, ref: ArtifactRef) -> Path:
    return root / "sha256" / ref.hex[:2] / ref.hex[2:]


def files_under(root: Path) -> list[str]:
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())


# -- round trips ---------------------------------------------------------------------------------
def test_bytes_round_trip_under_their_sha256_with_name_and_media_type(store: ArtifactStore, tmp_path: Path) -> None:
    data = b"id,total\n1,42\n"
    ref = store.put(data, name="report.csv", media_type="text/csv")
    assert ref == ArtifactRef(f"sha256:{hashlib.sha256(data).hexdigest()}", len(data), "report.csv", "text/csv")
    assert store.get_bytes(ref) == data
    assert store.exists(ref) and store.exists(ref.digest)
    assert stored_file(tmp_path / "artifacts", ref).read_bytes() == data
    assert files_under(tmp_path / "artifacts") == [f"sha256/{ref.hex[:2]}/{ref.hex[2:]}"]  # no temp left behind


def test_a_20_mib_file_is_stored_and_read_back_in_chunks_never_whole_in_memory(store: ArtifactStore,
                                                                               tmp_path: Path) -> None:
    big, expected = tmp_path / "big.bin", hashlib.sha256()
    with big.open("wb") as out:
        for i in range(20):
            chunk = hashlib.sha256(str(i).encode()).digest() * (CHUNK // 32)
            expected.update(chunk)
            out.write(chunk)
    tracemalloc.start()
    try:
        ref = store.put(big)
        _, put_peak = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        read, got = 0, hashlib.sha256()
        with store.open(ref) as reader:
            while chunk := reader.read(CHUNK):
                read += len(chunk)
                got.update(chunk)
        _, read_peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert (ref.digest, ref.size, ref.name) == (f"sha256:{expected.hexdigest()}", 20 * CHUNK, "big.bin")
    assert (read, got.hexdigest()) == (20 * CHUNK, expected.hexdigest())
    assert put_peak < 8 * CHUNK and read_peak < 8 * CHUNK  # a few chunks at a time, never the 20 MiB
    with big.open("rb") as stream:
        assert store.put(stream, name="big.bin") == ref  # a stream stores the same artifact


def test_identical_content_is_stored_once_whatever_its_names(store: ArtifactStore, tmp_path: Path) -> None:
    first = store.put(b"same bytes", name="a.txt")
    second = store.put(io.BytesIO(b"same bytes"), name="b.txt", media_type="text/plain")
    assert first.digest == second.digest and (first.name, second.name) == ("a.txt", "b.txt")
    assert len(files_under(tmp_path / "artifacts")) == 1
    assert [info.digest for info in store.iter_artifacts()] == [first.digest]


def test_a_file_url_is_the_same_local_store_as_its_path(tmp_path: Path) -> None:
    ref = ArtifactStore(tmp_path).put(b"local")
    assert ArtifactStore(f"file://{tmp_path}").get_bytes(ref) == b"local"
    assert repr(ArtifactStore(tmp_path)) == f"ArtifactStore({str(tmp_path)!r})"


def test_a_missing_artifact_is_reported_by_digest_and_delete_says_whether_it_was_there(store: ArtifactStore) -> None:
    ref = store.put(b"short-lived")
    assert store.delete(ref) is True and store.delete(ref.digest) is False
    assert not store.exists(ref)
    with pytest.raises(ArtifactNotFound, match=ref.digest) as caught:
        store.get_bytes(ref)
    assert caught.value.digest == ref.digest


def test_a_read_above_its_limit_is_refused_before_reading(store: ArtifactStore) -> None:
    ref = store.put(b"x" * 100)
    assert store.get_bytes(ref, limit=100) == b"x" * 100
    with pytest.raises(ArtifactTooLarge, match="100 bytes, more than the limit of 99"):
        store.get_bytes(ref, limit=99)


def test_a_put_above_max_bytes_is_refused_and_leaves_nothing_behind(tmp_path: Path) -> None:
    store = ArtifactStore(tmp_path, max_bytes=10)
    assert store.put(b"0123456789").size == 10
    with pytest.raises(ArtifactTooLarge, match="'big.bin' is larger than the artifact store's limit of 10 bytes"):
        store.put(b"0123456789!", name="big.bin")
    assert len(files_under(tmp_path)) == 1


def test_a_put_whose_stream_fails_midway_leaves_no_temp_file_and_no_artifact(store: ArtifactStore,
                                                                             tmp_path: Path) -> None:
    class Failing(io.RawIOBase):
        def readable(self) -> bool:
            return True

        def readinto(self, buffer: Any) -> int:
            raise OSError("the source disk went away")

    with pytest.raises(ArtifactStoreUnavailable, match="storing an artifact failed"):
        store.put(io.BufferedReader(Failing()))
    assert files_under(tmp_path / "artifacts") == []


def test_a_store_whose_root_cannot_be_written_raises_a_store_error_naming_it(tmp_path: Path) -> None:
    (tmp_path / "not-a-dir").write_text("a file where the root should be")
    with pytest.raises(ArtifactStoreUnavailable, match="not-a-dir: storing an artifact failed") as caught:
        ArtifactStore(tmp_path / "not-a-dir").put(b"x")
    assert isinstance(caught.value, MiniFlowError) and isinstance(caught.value.__cause__, OSError)


def test_text_is_refused_as_content_rather_than_taken_for_a_path(store: ArtifactStore) -> None:
    with pytest.raises(TypeError, match="not str"):
        store.put("hello")  # type: ignore[arg-type]


# -- checksums -----------------------------------------------------------------------------------
@pytest.mark.parametrize("damage, problem", [
    (lambda data: b"X" + data[1:], "does not match its sha256 digest"),
    (lambda data: data[:-5], "it holds 13 bytes, its reference says 18"),
    (lambda data: data + b"more", "more than the 18 bytes"),
], ids=["flipped", "truncated", "extended"])
def test_damaged_content_on_disk_is_detected_on_read_naming_the_digest_never_the_content(
        store: ArtifactStore, tmp_path: Path, damage: Any, problem: str) -> None:
    ref = store.put(b"confidential bytes")
    path = stored_file(tmp_path / "artifacts", ref)
    path.write_bytes(damage(path.read_bytes()))
    with pytest.raises(ArtifactCorrupt, match=problem) as caught:
        store.get_bytes(ref)
    assert caught.value.digest == ref.digest and ref.digest in str(caught.value)
    assert "confidential" not in str(caught.value)
    with pytest.raises(ArtifactCorrupt), store.open(ref) as reader:  # reading just its size is checked too
        reader.read(ref.size)


def test_a_put_of_the_same_content_mends_a_damaged_copy(store: ArtifactStore, tmp_path: Path) -> None:
    ref = store.put(b"original")
    stored_file(tmp_path / "artifacts", ref).write_bytes(b"0riginal")
    with pytest.raises(ArtifactCorrupt):
        store.get_bytes(ref)
    assert store.put(b"original") == ref
    assert store.get_bytes(ref) == b"original"


def test_a_reference_claiming_another_size_fails_the_check(store: ArtifactStore) -> None:
    ref = store.put(b"twelve bytes")
    with pytest.raises(ArtifactCorrupt, match="more than the 5 bytes"):
        store.get_bytes(ArtifactRef(ref.digest, 5))


# -- references ----------------------------------------------------------------------------------
def test_a_reference_travels_as_a_small_marked_map_and_parses_back_equal() -> None:
    ref = ArtifactRef(GOOD, 12, "out.json", "application/json")
    data = ref.to_json()
    assert data == {"$artifact": GOOD, "size": 12, "name": "out.json", "media_type": "application/json"}
    assert ArtifactRef.from_json(msgpack.unpackb(msgpack.packb(data, use_bin_type=True))) == ref
    assert ArtifactRef.from_json({"$artifact": GOOD, "size": 0}) == ArtifactRef(GOOD, 0)
    assert is_ref(data) and not is_ref({"digest": GOOD}) and not is_ref([GOOD]) and not is_ref(GOOD)


@pytest.mark.parametrize("value, field, problem", [
    ({"$artifact": "sha256:" + "AB" * 32, "size": 1}, "digest", "64 lowercase hex digits"),
    ({"$artifact": "sha256:../../../../etc/passwd", "size": 1}, "digest", "not 'sha256:../../../../etc/passwd'"),
    ({"$artifact": GOOD + "\n", "size": 1}, "digest", "64 lowercase hex digits"),
    ({"$artifact": GOOD[:-1], "size": 1}, "digest", "64 lowercase hex digits"),
    ({"$artifact": "md5:" + "a" * 32, "size": 1}, "digest", "must be 'sha256:'"),
    ({"$artifact": 7, "size": 1}, "digest", "not int"),
    ({"size": 1, "name": "x"}, "digest", "is missing"),
    ({"$artifact": GOOD}, "size", "is missing"),
    ({"$artifact": GOOD, "size": -1}, "size", "from 0 to 1099511627776 bytes (1 TiB), not -1"),
    ({"$artifact": GOOD, "size": MAX_SIZE + 1}, "size", "not 1099511627777"),
    ({"$artifact": GOOD, "size": 10 ** 400}, "size", "not a larger number"),
    ({"$artifact": GOOD, "size": True}, "size", "not bool"),
    ({"$artifact": GOOD, "size": "12"}, "size", "not str"),
    ({"$artifact": GOOD, "size": 1.0}, "size", "not float"),
    ({"$artifact": GOOD, "size": 1, "name": "../../etc/passwd"}, "name", "plain file name"),
    ({"$artifact": GOOD, "size": 1, "name": "..\\boot.ini"}, "name", "plain file name"),
    ({"$artifact": GOOD, "size": 1, "name": ".."}, "name", "plain file name"),
    ({"$artifact": GOOD, "size": 1, "name": "a\x00b"}, "name", "control character"),
    ({"$artifact": GOOD, "size": 1, "name": "x" * 256}, "name", "at most 255 characters, not 256"),
    ({"$artifact": GOOD, "size": 1, "name": None}, "name", "not NoneType"),
    ({"$artifact": GOOD, "size": 1, "media_type": 3}, "media_type", "not int"),
    ({"$artifact": GOOD, "size": 1, "media_type": "text/csv\r\nX-Evil: 1"}, "media_type", "such as 'text/csv'"),
    ({"$artifact": GOOD, "size": 1, "media_type": "csv"}, "media_type", "such as 'text/csv'"),
    ({"$artifact": GOOD, "size": 1, "path": "/etc/passwd"}, "reference", "unknown field(s) 'path'"),
    ([GOOD, 1], "reference", "must be a map with a '$artifact' key, not list"),
    (GOOD, "reference", "not str"),
])
def test_a_hostile_reference_is_rejected_naming_the_field(value: Any, field: str, problem: str) -> None:
    with pytest.raises(ArtifactRefInvalid) as caught:
        ArtifactRef.from_json(value)
    assert caught.value.field == field
    assert problem in str(caught.value) and str(caught.value).startswith(f"artifact reference: {field} ")
    assert "\n" not in str(caught.value) and "\x00" not in str(caught.value)


def test_a_rejected_value_is_shown_only_as_a_short_prefix() -> None:
    with pytest.raises(ArtifactRefInvalid) as caught:
        ArtifactRef.from_json({"$artifact": "sha256:" + "z" * 100_000, "size": 1})
    assert len(str(caught.value)) < 300


def test_a_reference_made_in_code_is_checked_as_strictly(tmp_path: Path) -> None:
    with pytest.raises(ArtifactRefInvalid, match="name must be a plain file name"):
        ArtifactRef(GOOD, 1, "a/b")
    with pytest.raises(ArtifactRefInvalid, match="name must be a plain file name"):
        ArtifactStore(tmp_path).put(b"x", name="../x")


@pytest.mark.parametrize("digest", ["sha256:../../outside", "../../outside", "sha256:" + "a" * 62 + "/.",
                                    "ab" * 32, "sha256:" + "ab" * 32 + "/../x"])
def test_no_digest_can_reach_a_path_outside_the_root(tmp_path: Path, digest: str) -> None:
    store = ArtifactStore(tmp_path / "root")
    (tmp_path / "outside").write_bytes(b"keep me")
    for call in (store.exists, store.delete):
        with pytest.raises(ArtifactRefInvalid, match="digest must be 'sha256:' and 64 lowercase hex digits"):
            call(digest)
    with pytest.raises(ArtifactRefInvalid, match="keep must be"):
        store.gc(older_than=DAY, keep=[digest])
    assert (tmp_path / "outside").read_bytes() == b"keep me"


# -- gc ------------------------------------------------------------------------------------------
def test_gc_removes_old_unreferenced_artifacts_and_keeps_referenced_and_young_ones(
        store: ArtifactStore, clock: Clock) -> None:
    old = store.put(b"old and unreferenced")
    referenced = store.put(b"old but referenced")
    clock.now = T0 + 3 * DAY
    young = store.put(b"young")
    absent = "sha256:" + "0" * 64
    report = store.gc(older_than=DAY, keep={referenced.digest, absent})
    assert report == GcReport(removed=1, removed_bytes=old.size, kept=2, kept_bytes=referenced.size + young.size,
                              referenced=1, missing=1)
    assert not store.exists(old) and store.exists(referenced) and store.exists(young)


def test_gc_with_dry_run_reports_the_same_and_removes_nothing(store: ArtifactStore, clock: Clock,
                                                               tmp_path: Path) -> None:
    store.put(b"old one")
    (tmp_path / "artifacts" / "tmp" / f"{int(T0.timestamp())}-{'0' * 16}.part").write_bytes(b"half")
    before = files_under(tmp_path / "artifacts")
    report = store.gc(older_than=DAY, now=T0 + 2 * DAY, dry_run=True)
    assert report == GcReport(removed=1, removed_bytes=7, temps_removed=1, temps_removed_bytes=4, dry_run=True)
    assert files_under(tmp_path / "artifacts") == before
    assert store.gc(older_than=DAY, now=T0 + 2 * DAY) == GcReport(removed=1, removed_bytes=7, temps_removed=1,
                                                                   temps_removed_bytes=4)
    assert files_under(tmp_path / "artifacts") == []


def test_gc_removes_stale_temp_files_of_failed_writes_and_leaves_fresh_and_foreign_files(
        store: ArtifactStore, tmp_path: Path) -> None:
    root = tmp_path / "artifacts"
    store.put(b"creates the folders")
    stale = root / "tmp" / f"{int((T0 - 2 * DAY).timestamp())}-{'a' * 16}.part"
    fresh = root / "tmp" / f"{int(T0.timestamp())}-{'b' * 16}.part"
    foreign = [root / "tmp" / "notes.txt", root / "sha256" / "README"]
    for path in (stale, fresh, *foreign):
        path.write_bytes(b"...")
    report = store.gc(older_than=DAY)
    assert (report.temps_removed, report.removed, report.kept) == (1, 0, 1)
    assert not stale.exists() and fresh.exists() and all(path.exists() for path in foreign)
    assert len(list(store.iter_artifacts())) == 1  # temps and foreign files are no artifacts


def test_a_put_of_stored_content_refreshes_its_time(store: ArtifactStore, clock: Clock) -> None:
    ref = store.put(b"used again")
    clock.now = T0 + 3 * DAY
    store.put(b"used again")
    assert [(info.digest, info.modified) for info in store.iter_artifacts()] == [(ref.digest, T0 + 3 * DAY)]
    assert store.gc(older_than=DAY, now=T0 + 3 * DAY + timedelta(hours=1)).kept == 1


def test_gc_refuses_a_naive_now_and_a_negative_age(store: ArtifactStore) -> None:
    with pytest.raises(ValueError, match="aware"):
        store.gc(older_than=DAY, now=datetime(2026, 1, 1))
    with pytest.raises(ValueError, match="negative"):
        store.gc(older_than=-DAY)


# -- fsspec --------------------------------------------------------------------------------------
def test_a_memory_store_round_trips_dedupes_and_collects(memory_url: str) -> None:
    store = ArtifactStore(memory_url)
    ref = store.put(b"in memory", name="m.bin")
    assert store.put(io.BytesIO(b"in memory")) == ArtifactRef(ref.digest, ref.size)
    assert store.get_bytes(ref) == b"in memory" and store.exists(ref.digest)
    [info] = store.iter_artifacts()  # dated by the file system's clock, the wall clock here
    assert info.digest == ref.digest and info.modified is not None
    assert store.gc(older_than=DAY, now=info.modified + DAY / 2).kept == 1
    assert store.gc(older_than=DAY, now=info.modified + 2 * DAY, keep=[ref.digest]).referenced == 1
    assert store.gc(older_than=DAY, now=info.modified + 2 * DAY).removed == 1
    assert not store.exists(ref) and list(store.iter_artifacts()) == []


def test_a_memory_store_detects_damage_and_leaves_no_temp(memory_url: str) -> None:
    store = ArtifactStore(memory_url)
    ref = store.put(b"checked in memory too")
    fs = importlib.import_module("fsspec").filesystem("memory")
    root = memory_url.removeprefix("memory:/")
    assert sorted(fs.find(root)) == [f"{root}/sha256/{ref.hex[:2]}/{ref.hex[2:]}"]
    fs.pipe_file(f"{root}/sha256/{ref.hex[:2]}/{ref.hex[2:]}", b"checked in memory tOo")
    with pytest.raises(ArtifactCorrupt, match=ref.digest):
        store.get_bytes(ref)


def test_an_unknown_scheme_is_a_config_error_naming_it() -> None:
    with pytest.raises(ConfigError, match="'nosuchfs' is not a file system fsspec knows"):
        ArtifactStore("nosuchfs://somewhere/x")


@pytest.mark.skipif(importlib.util.find_spec("s3fs") is not None, reason="s3fs is installed here")
def test_a_missing_backend_package_is_a_config_error_saying_what_to_install() -> None:
    with pytest.raises(ConfigError, match=r"s3:// needs s3fs, which cannot be imported \(pip install s3fs\)"):
        ArtifactStore("s3://bucket/prefix")


@pytest.mark.skipif(importlib.util.find_spec("s3fs") is not None, reason="s3fs is installed here")
def test_credentials_in_a_url_never_appear_in_an_error_nor_in_its_chain() -> None:
    with pytest.raises(ConfigError) as caught:
        ArtifactStore("s3://AKIDEXAMPLE:wJalrXUtnFEMI/K7MDENG@my-bucket/prefix?X-Amz-Security-Token=tok3n")
    assert "s3://***@my-bucket/prefix?***" in str(caught.value)
    # fsspec's own error is not chained into the traceback: it may quote the URL
    assert caught.value.__cause__ is None and caught.value.__suppress_context__
    shown = "".join(traceback.format_exception_only(caught.value))
    for secret in ("AKIDEXAMPLE", "wJalrXUtnFEMI", "K7MDENG", "tok3n"):
        assert secret not in str(caught.value) and secret not in shown


def test_credentials_in_a_url_never_appear_in_repr_or_store_errors(memory_url: str) -> None:
    store = ArtifactStore(memory_url.replace("memory://", "memory://admin:hunter2hunter2@") + "/x?token=s3kr1t")
    with pytest.raises(ArtifactNotFound) as caught:
        store.get_bytes(ArtifactRef(GOOD, 1))
    with pytest.raises(ConfigError) as unknown:
        ArtifactStore("nosuchfs://admin:hunter2hunter2@host/x")
    for text in (repr(store), str(store.url), str(caught.value), str(unknown.value)):
        assert "hunter2hunter2" not in text and "admin" not in text and "s3kr1t" not in text
    assert repr(store) == f"ArtifactStore('memory://***@{memory_url.removeprefix('memory://')}/x?***')"


@pytest.mark.parametrize("url, shown", [
    ("s3://KEY:se/cr@et@bucket/p?sig=1", "s3://***@bucket/p?***"),
    ("gs://token@bucket", "gs://***@bucket"),
    ("abfs://container/p#frag", "abfs://container/p?***"),
    ("memory://name/x", "memory://name/x"),
    ("/var/lib/miniflow/artifacts", "/var/lib/miniflow/artifacts"),
])
def test_a_url_is_displayed_without_user_info_or_query(url: str, shown: str) -> None:
    assert display_url(url) == shown


# -- threshold helpers ---------------------------------------------------------------------------
def test_a_value_within_the_threshold_stays_in_place(store: ArtifactStore, tmp_path: Path) -> None:
    value = {"rows": [1, 2, 3]}
    size = len(msgpack.packb(value, use_bin_type=True))
    assert externalize(value, store, size) is value
    assert internalize(value, store) is value
    assert list(store.iter_artifacts()) == []


def test_a_value_above_the_threshold_travels_as_a_reference_and_comes_back_checked(
        store: ArtifactStore, tmp_path: Path) -> None:
    value = {"rows": list(range(1000)), "blob": b"\x00\x01"}
    encoded = msgpack.packb(value, use_bin_type=True)
    out = externalize(value, store, len(encoded) - 1)
    assert is_ref(out) and (out["media_type"], out["size"]) == (MSGPACK, len(encoded))
    assert len(msgpack.packb(out, use_bin_type=True)) < 150
    assert internalize(out, store) == value
    ref = ArtifactRef.from_json(out)
    stored_file(tmp_path / "artifacts", ref).write_bytes(b"\x00" * ref.size)
    with pytest.raises(ArtifactCorrupt, match=ref.digest):
        internalize(out, store)


def test_a_reference_to_a_file_is_left_for_the_executor_to_fetch(store: ArtifactStore) -> None:
    ref = store.put(b"a,b\n", name="t.csv", media_type="text/csv").to_json()
    assert internalize(ref, store) is ref
    with pytest.raises(ArtifactRefInvalid, match="digest"):
        internalize({"$artifact": "sha256:../x", "size": 1, "media_type": MSGPACK}, store)
