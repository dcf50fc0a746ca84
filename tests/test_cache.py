"""The result cache of steps (coordinator/cache.py): a cached step's output is reused by a later step
of the same task and key, in any run of any workflow, recorded as an attempt on node `cache`,
nothing dispatched; `miniflow cache list|clear`. On the embedded engine
(tests/integration/test_cache.py has the real services)."""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path

import pytest
from click.testing import CliRunner

from miniflow.coordinator import loads
from miniflow.ops.cli import cli
from miniflow.persistence import repository as repo
from miniflow.protocol.errors import DefinitionError

from .steps_for_tests import flaky_calls

CACHED = """
name: cached
params: {x: {default: 1}, token: {secret: true, default: s3cr3t}}
steps:
  - {name: fetch, task: test.flaky, config: {fail_times: 0}, cache: {ttl: 3600}}
  - {name: after, task: test.echo, needs: [fetch]}
"""


def test_a_cache_hit_on_the_second_run_dispatches_nothing_and_records_a_cache_attempt(engine):
    engine.deploy(loads(CACHED))
    first = engine.wait(engine.submit("cached", {"x": 1}), timeout=30)
    assert first.status == "succeeded"
    second = engine.wait(engine.submit("cached", {"x": 1}), timeout=30)
    assert second.status == "succeeded", second.error
    fetch = {s.step: s for s in second.steps}["fetch"]
    assert fetch.node == "cache" and fetch.output == {s.step: s for s in first.steps}["fetch"].output
    assert (fetch.note or "").startswith(
        f"cache hit: the output of step 'fetch' in run {first.run_id} (cached), stored at")
    [hit] = [a for a in second.attempts if a.step == "fetch"]
    assert hit.ok and hit.node == "cache" and hit.duration_ms == 0
    assert flaky_calls(second.run_id, "fetch") == 0  # the task never ran for the second run
    # the step after it ran, with the cached output as its input
    assert {s.step: s for s in second.steps}["after"].output["inputs"] == {"fetch": fetch.output}
    with engine.db.connect() as conn:
        [entry] = repo.cache_list(conn)
    assert entry.hits == 1 and entry.run_id == first.run_id and entry.task == "test.flaky"


def test_other_params_are_another_key_and_secret_params_are_not_part_of_it(engine):
    engine.deploy(loads(CACHED))
    engine.wait(engine.submit("cached", {"x": 1}), timeout=30)
    other = engine.wait(engine.submit("cached", {"x": 2}), timeout=30)
    assert {s.step: s.node for s in other.steps}["fetch"] != "cache"
    same = engine.wait(engine.submit("cached", {"x": 1, "token": "another"}), timeout=30)
    assert {s.step: s.node for s in same.steps}["fetch"] == "cache"


def test_a_key_expression_shares_the_cache_across_workflows_of_the_same_task(engine):
    keyed = CACHED.replace("cache: {ttl: 3600}", "cache: {ttl: 3600, key: \"config.fail_times\"}")
    engine.deploy(loads(keyed))
    engine.deploy(loads(keyed.replace("name: cached", "name: elsewhere")))
    engine.wait(engine.submit("cached", {"x": 1}), timeout=30)
    there = engine.wait(engine.submit("elsewhere", {"x": 99}), timeout=30)
    assert {s.step: s.node for s in there.steps}["fetch"] == "cache"


def test_an_expired_entry_is_not_served(engine):
    engine.deploy(loads(CACHED))
    engine.wait(engine.submit("cached", {"x": 1}), timeout=30)
    with engine.db.transaction() as conn:  # age the entry past its ttl
        [entry] = repo.cache_list(conn)
        repo.cache_clear(conn, digest=entry.digest)
        repo.cache_put(conn, type(entry)(**{**{f: getattr(entry, f) for f in entry.__slots__},
                                           "expires_at": entry.created_at - timedelta(seconds=1)}))
    again = engine.wait(engine.submit("cached", {"x": 1}), timeout=30)
    assert {s.step: s.node for s in again.steps}["fetch"] != "cache"


def test_a_failed_step_stores_nothing(engine):
    engine.deploy(loads(CACHED.replace("fail_times: 0", "fail_times: 1")))
    failed = engine.wait(engine.submit("cached", {"x": 1}), timeout=30)
    assert failed.status == "failed"
    with engine.db.connect() as conn:
        assert repo.cache_list(conn) == []


def test_cache_list_and_clear_on_the_command_line(engine, tmp_path: Path):
    engine.deploy(loads(CACHED))
    engine.wait(engine.submit("cached", {"x": 1}), timeout=30)
    env = {"MINIFLOW_DATABASE_URL": engine.db.url}
    runner = CliRunner()
    listed = runner.invoke(cli, ["cache", "list", "--json"], env=env)
    assert listed.exit_code == 0, listed.output
    shown = json.loads(listed.output)
    assert shown["total"] == 1 and shown["entries"][0]["task"] == "test.flaky"
    assert shown["entries"][0]["expired"] is False and "output" not in shown["entries"][0]
    refused = runner.invoke(cli, ["cache", "clear"], env=env)
    assert refused.exit_code == 2 and "say what to clear" in refused.output
    cleared = runner.invoke(cli, ["cache", "clear", "--task", "test.flaky"], env=env)
    assert cleared.exit_code == 0 and "removed 1 cache entry" in cleared.output
    with engine.db.connect() as conn:
        assert repo.cache_list(conn) == []


@pytest.mark.parametrize("cache,words", [
    ("{ttl: 0}", "cache 'ttl' must be seconds from 1 to"),
    ("{ttl: 60, key: 'outputs.a'}", "cache 'key' reads 'outputs'"),
    ("{key: 'params.token'}", "cache 'key' reads a secret param"),
    ("{size: 3}", "'cache' must be true or a mapping"),
    ("{key: 'inputs.'}", "cache 'key': not a valid expression"),
])
def test_a_cache_is_checked_when_the_workflow_is_read(cache: str, words: str) -> None:
    with pytest.raises(DefinitionError) as caught:
        loads(CACHED.replace("{ttl: 3600}", cache))
    assert words in str(caught.value) and "fetch" in str(caught.value)


def test_a_workflow_without_a_cache_keeps_its_stored_form() -> None:
    plain = loads(CACHED.replace(", cache: {ttl: 3600}", ""))
    assert all("cache" not in s for s in plain.to_spec()["steps"]) and not plain.cached
    assert loads(CACHED).to_spec()["steps"][0]["cache"] == {"ttl": 3600.0}
    assert loads(CACHED.replace("{ttl: 3600}", "true")).steps["fetch"].cache.ttl == 86400.0  # type: ignore[union-attr]


def test_a_run_whose_step_after_a_failure_is_a_cache_hit_still_fails(engine):
    engine.deploy(loads("""
name: cleanup-cached
steps:
  - {name: bad, task: test.boom}
  - {name: tidy, task: test.flaky, config: {fail_times: 0}, needs: [bad], trigger: all_done, cache: true}
"""))
    first = engine.wait(engine.submit("cleanup-cached"), timeout=30)
    second = engine.wait(engine.submit("cleanup-cached"), timeout=30)
    assert {s.step: s.node for s in second.steps}["tidy"] == "cache"
    assert first.status == second.status == "failed"
    assert (second.error or "").startswith("step 'bad' failed")
