"""Outputs too large for a message travel as artifacts (persistence/offload.py), on the embedded
engine and its local artifact folder: a 20 MB output end to end with its checksum checked, a
corrupted artifact refused by name, files a step stores with ctx.artifacts, a map over a list
stored as an artifact and a map's long list of results stored as one, and the gc that keeps what
the database refers to. tests/integration/test_artifacts.py runs the 20 MB output on the real
services."""

from __future__ import annotations

import hashlib
import json
import threading
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from miniflow.coordinator import loads
from miniflow.ops.cli import cli
from miniflow.ops.embedded import EmbeddedEngine
from miniflow.ops.polling import poll_until
from miniflow.persistence import repository as repo
from miniflow.persistence.artifact_refs import MSGPACK, ArtifactRef, is_ref
from miniflow.persistence.artifacts import ArtifactStore
from miniflow.persistence.offload import LazyInputs, Offload, keep_set
from miniflow.protocol.errors import ArtifactCorrupt, ConfigError

from .steps_for_tests import GATES

BIG = """name: big
steps:
  - {name: make, task: test.blob, config: {kib: 20480}}
  - {name: hold, task: test.gate, config: {gate: GATE}}
  - {name: use, task: test.digest, needs: [make, hold]}
"""


@pytest.fixture
def store_dir(tmp_path: Path) -> Path:
    return tmp_path / "artifacts"


@pytest.fixture
def big_engine(tmp_path: Path, store_dir: Path) -> Any:
    offload = Offload(ArtifactStore(store_dir), 256 * 1024)
    with EmbeddedEngine(f"sqlite:///{tmp_path / 'big.db'}", threads=4, offload=offload) as engine:
        yield engine


def step_row(engine: EmbeddedEngine, run_id: str, step: str) -> Any:
    with engine.db.connect() as conn:
        return repo.get_step(conn, run_id, step)


def test_a_20_mb_output_travels_as_an_artifact_and_arrives_whole_with_its_checksum_checked(big_engine, store_dir):
    GATES.setdefault("open-20mb", threading.Event()).set()
    big_engine.deploy(loads(BIG.replace("GATE", "open-20mb")))
    run = big_engine.wait(big_engine.submit("big", {}), timeout=120)
    assert run.status == "succeeded", run.error
    made = step_row(big_engine, run.run_id, "make")
    assert is_ref(made.output) and made.output["media_type"] == MSGPACK  # the row holds the reference only
    assert len(json.dumps(made.output)) < 300
    expected = "x" * (20480 * 1024)
    assert step_row(big_engine, run.run_id, "use").output["make"] == {
        "len": len(expected), "sha256": hashlib.sha256(expected.encode()).hexdigest()}
    ref = ArtifactRef.from_json(made.output)
    assert (store_dir / "sha256" / ref.hex[:2] / ref.hex[2:]).stat().st_size == ref.size > 20 * 1024 * 1024


def test_a_corrupted_artifact_fails_the_step_that_reads_it_naming_its_digest(big_engine, store_dir):
    gate = GATES.setdefault("corrupt-20mb", threading.Event())
    big_engine.deploy(loads(BIG.replace("GATE", "corrupt-20mb").replace("kib: 20480", "kib: 400")))
    key = big_engine.submit("big", {})

    def made() -> Any:
        with big_engine.db.connect() as conn:
            run_id = repo.run_id_for_key(conn, key)
            row = repo.get_step(conn, run_id, "make") if run_id else None
        return row if row is not None and row.status == "succeeded" else None

    ref = ArtifactRef.from_json(poll_until(made, timeout=60).output)
    path = store_dir / "sha256" / ref.hex[:2] / ref.hex[2:]
    data = bytearray(path.read_bytes())
    data[1000] ^= 0xFF  # one byte flipped, the size unchanged
    path.write_bytes(bytes(data))
    gate.set()
    run = big_engine.wait(key, timeout=60)
    assert run.status == "failed"
    use = next(a for a in run.attempts if a.step == "use")
    assert use.error_type == "ArtifactCorrupt" and ref.digest in use.error and "does not match its sha256" in use.error


def test_a_file_a_step_stores_with_ctx_artifacts_is_opened_by_the_next_one(engine):
    engine.deploy(loads("name: files\nsteps:\n  - {name: write, task: test.write_file, config: {kib: 300}}\n"
                        "  - {name: read, task: test.read_file, needs: [write]}\n"))
    run = engine.wait(engine.submit("files", {}), timeout=30)
    assert run.status == "succeeded", run.error
    steps = {s.step: s for s in run.steps}
    data = bytes(range(256)) * 1200
    assert steps["write"].output["file"]["name"] == "data.bin" and steps["write"].output["file"]["size"] == len(data)
    assert steps["read"].output == {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}


def test_a_map_over_a_list_stored_as_an_artifact_and_its_long_list_of_results_stored_as_one(engine):
    items = [f"{i:05d}-" + "z" * 200 for i in range(2000)]  # ~420 KB as JSON: over the threshold
    engine.deploy(loads("name: big-map\nsteps:\n"
                        f"  - {{name: split, task: test.range, config: {{items: {json.dumps(items)}}}}}\n"
                        "  - {name: each, task: test.element, needs: [split], map: split.items}\n"
                        "  - {name: after, task: test.digest, needs: [each]}\n"))
    run = engine.wait(engine.submit("big-map", {}), timeout=120)
    assert run.status == "succeeded", run.error
    steps = {s.step: s for s in run.steps}
    assert is_ref(steps["split"].output) and is_ref(steps["each"].output)
    results = [{"index": i, "item": item} for i, item in enumerate(items)]
    assert steps["after"].output["each"]["sha256"] == hashlib.sha256(json.dumps(results).encode()).hexdigest()
    assert steps["each[1999]"].output == {"index": 1999, "item": items[1999]}


def test_lazy_inputs_fetch_a_stored_value_only_when_read_and_refuse_a_corrupt_one(tmp_path: Path):
    offload = Offload(ArtifactStore(tmp_path), 1024)
    ref = offload.outgoing({"rows": list(range(2000))})
    assert is_ref(ref) and offload.outgoing({"small": 1}) == {"small": 1}
    inputs = LazyInputs({"a": ref, "b": 3, "file": {"$artifact": ref["$artifact"], "size": 1}}, offload)
    assert inputs["b"] == 3 and inputs.get("missing") is None
    assert inputs["a"]["rows"][-1] == 1999 and dict(inputs.items())["a"] == inputs["a"]
    assert inputs["file"]["size"] == 1  # a reference of another media type stays a reference
    parsed = ArtifactRef.from_json(ref)
    (tmp_path / "sha256" / parsed.hex[:2] / parsed.hex[2:]).write_bytes(b"\x00" * parsed.size)
    with pytest.raises(ArtifactCorrupt):
        LazyInputs({"a": ref}, offload)["a"]


def test_gc_keeps_what_the_database_refers_to_and_removes_the_rest_past_the_grace(tmp_path: Path, monkeypatch):
    store = ArtifactStore(tmp_path / "artifacts")
    offload = Offload(store, 1024)
    db_url = f"sqlite:///{tmp_path / 'gc.db'}"
    with EmbeddedEngine(db_url, threads=2, offload=offload) as engine:
        engine.deploy(loads("name: keep\nsteps:\n  - {name: make, task: test.blob, config: {kib: 8}}\n"))
        run = engine.wait(engine.submit("keep", {}), timeout=30)
        with engine.db.connect() as conn:
            kept = keep_set(repo.texts_with_refs(conn), store)
    assert run.status == "succeeded" and len(kept) == 1
    orphan = store.put(b"nothing refers to me" * 100)
    monkeypatch.setenv("MINIFLOW_DATABASE_URL", db_url)
    monkeypatch.setenv("MINIFLOW_ARTIFACTS", str(tmp_path / "artifacts"))
    dry = CliRunner().invoke(cli, ["artifacts", "gc", "--older-than", "0s", "--dry-run", "--json"])
    assert dry.exit_code == 0, dry.output
    assert json.loads(dry.output)["removed"] == 1 and store.exists(orphan)
    young = CliRunner().invoke(cli, ["artifacts", "gc", "--json"])  # the default grace: a day
    assert json.loads(young.output)["removed"] == 0 and store.exists(orphan)
    done = CliRunner().invoke(cli, ["artifacts", "gc", "--older-than", "0s", "--json"])
    report = json.loads(done.output)
    assert report["removed"] == 1 and report["referenced"] == 1 and not store.exists(orphan)
    assert store.exists(next(iter(kept)))
    bad = CliRunner().invoke(cli, ["artifacts", "gc", "--older-than", "soon"])
    assert isinstance(bad.exception, ConfigError) and "'soon' is not a duration" in str(bad.exception)
    assert store.gc(older_than=timedelta(0), keep=kept).removed == 0


def test_a_maps_elements_stored_as_artifacts_arrive_as_values_in_the_list(tmp_path: Path):
    offload = Offload(ArtifactStore(tmp_path / "store"), 1024)
    with EmbeddedEngine(f"sqlite:///{tmp_path / 'elements.db'}", threads=4, offload=offload) as engine:
        engine.deploy(loads("name: big-elements\nsteps:\n  - {name: split, task: test.range, config: {n: 3}}\n"
                            "  - {name: each, task: test.blob, needs: [split], map: split.items, config: {kib: 2}}\n"
                            "  - {name: after, task: test.digest, needs: [each]}\n"))
        run = engine.wait(engine.submit("big-elements", {}), timeout=60)
    assert run.status == "succeeded", run.error
    steps = {s.step: s for s in run.steps}
    assert all(is_ref(v) for v in steps["each"].output)  # each element's output is stored, the list holds refs
    expected = json.dumps(["x" * 2048] * 3)
    assert steps["after"].output["each"] == {"len": len(expected),
                                             "sha256": hashlib.sha256(expected.encode()).hexdigest()}


def test_gc_keeps_the_files_referred_to_inside_a_stored_value(tmp_path: Path):
    store = ArtifactStore(tmp_path / "store")
    offload = Offload(store, 1024)
    inner = store.put(b"a file inside" * 10, name="inner.bin")
    outer = offload.outgoing({"file": inner.to_json(), "pad": "p" * 4096})
    assert is_ref(outer)
    kept = keep_set([json.dumps({"output": outer})], store)
    assert kept == {outer["$artifact"], inner.digest}
    assert store.gc(older_than=timedelta(0), keep=kept).removed == 0
