"""The HTTP API and the Python client end to end on the real RabbitMQ and Postgres: `miniflow api` as
its own process, workers as their own processes, every call over HTTP."""

from __future__ import annotations

import json
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from miniflow import ApiError, Client
from miniflow.ops.processes import ApiProcess

from .conftest import BIN, ROOT, WorkerProcess, miniflow, own_namespace, poll

WORKFLOWS = {
    "api-echo": "name: api-echo\nparams: {token: {secret: true}, n: {default: 1}}\n"
                "steps:\n  - {name: a, task: test.echo}\n  - {name: b, task: test.echo, needs: [a]}\n",
    "api-slow": "name: api-slow\nsteps:\n  - {name: nap, task: test.sleep, config: {seconds: 60}}\n"
                "  - {name: after, task: test.echo, needs: [nap]}\n",
    "api-flaky": "name: api-flaky\nsteps:\n  - {name: once, task: test.flaky, config: {fail_times: 1}}\n",
}
SECRET = "api-secret-value-0987654321"


@pytest.fixture(scope="module")
def api(env: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    with own_namespace(env, "api") as own:
        yield from _api(own, tmp_path_factory)


def _api(env: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    folder = tmp_path_factory.mktemp("api")
    for name, text in WORKFLOWS.items():
        (folder / f"{name}.yaml").write_text(text)
        deployed = miniflow(env, "deploy", str(folder / f"{name}.yaml"))
        assert deployed.returncode == 0, deployed.stderr
    tokens = {}
    for role in ("viewer", "operator", "admin"):
        made = miniflow(env, "keys", "create", "--name", f"api-{role}-{uuid.uuid4().hex[:6]}", "--role", role,
                        "--json")
        assert made.returncode == 0, made.stderr
        tokens[role] = json.loads(made.stdout)["token"]
    workers = [
        WorkerProcess(env, ["--role", "coordinator", "--role", "results", "--threads", "4"], folder / "coord.log"),
        WorkerProcess(env, ["--steps", "tests.steps_for_tests", "--threads", "4"], folder / "exec.log"),
    ]
    server = ApiProcess(env, ["--port", "0"], folder / "api.log", cwd=ROOT)
    try:
        for w in [*workers, server]:
            w.wait_ready()
        yield {"url": server.url, "tokens": tokens, "env": env, "server": server}
    finally:
        for w in [server, *workers]:
            w.stop()


def http(api: dict[str, Any], role: str) -> httpx.Client:
    return httpx.Client(base_url=api["url"], headers={"Authorization": f"Bearer {api['tokens'][role]}"}, timeout=60)


def follow(api: dict[str, Any], run_id: str) -> list[dict[str, Any]]:
    """Every event of a run's stream until its end."""
    with http(api, "viewer") as client, client.stream("GET", f"/runs/{run_id}/events",
                                                       timeout=httpx.Timeout(60, read=90)) as answer:
        assert answer.status_code == 200
        return [json.loads(line[5:]) for line in answer.iter_lines() if line.startswith("data:")]


def test_a_start_through_the_api_runs_once_per_idempotency_key_and_its_events_follow_it(api):
    key = f"api-{uuid.uuid4()}"
    with http(api, "operator") as client:
        first = client.post("/runs", json={"workflow": "api-echo", "params": {"token": SECRET}},
                            headers={"Idempotency-Key": key})
        again = client.post("/runs", json={"workflow": "api-echo", "params": {"token": SECRET}},
                            headers={"Idempotency-Key": key})
    assert first.status_code in (201, 202), first.text
    started = first.json()
    run_id = started["run_id"] or poll(lambda: httpx.get(f"{api['url']}/runs", params={"idempotency_key": key},
                                                         headers={"Authorization": f"Bearer {api['tokens']['viewer']}"}
                                                         ).json()["items"], what="the run")[0]["id"]
    assert again.status_code == 200 and again.json()["existing"] and again.json()["run_id"] == run_id
    events = follow(api, run_id)
    assert events[-1] == {"kind": "end", "run_id": run_id, "status": "succeeded", "step": None, "attempt": None,
                          "error": None}
    steps_done = [(e["step"], e["status"]) for e in events if e["kind"] == "step" and e["status"] == "succeeded"]
    assert steps_done == [("a", "succeeded"), ("b", "succeeded")]
    with http(api, "viewer") as client:
        shown = client.get(f"/runs/{run_id}").json()
    assert shown["status"] == "succeeded" and SECRET not in json.dumps(shown)
    assert "trace_id" in shown and all(s["queue_wait_ms"] is not None for s in shown["steps"])
    rows = miniflow(api["env"], "runs", "list", "--json")
    assert [r["id"] for r in json.loads(rows.stdout)].count(run_id) == 1


def test_a_run_is_cancelled_and_a_failed_one_retried_through_the_api(api):
    with http(api, "operator") as client:
        slow = client.post("/runs", json={"workflow": "api-slow"}, params={"wait": 30}).json()
        flaky = client.post("/runs", json={"workflow": "api-flaky"}, params={"wait": 30}).json()
        assert slow["run_id"] and flaky["run_id"]
        cancel = client.post(f"/runs/{slow['run_id']}/cancel", json={"reason": "not needed"})
        assert cancel.status_code == 202 and cancel.json()["published"], cancel.text
        assert follow(api, slow["run_id"])[-1]["status"] == "cancelled"
        assert follow(api, flaky["run_id"])[-1]["status"] == "failed"
        retry = client.post(f"/runs/{flaky['run_id']}/retry", params={"wait": 30})
        assert retry.status_code == 202 and retry.json()["handled"], retry.text
        assert follow(api, flaky["run_id"])[-1]["status"] == "succeeded"
        again = client.post(f"/runs/{flaky['run_id']}/retry")
    assert again.status_code == 409 and again.json()["error"]["code"] == "conflict"
    with http(api, "admin") as client:
        trail = client.get("/audit", params={"limit": 200}).json()["items"]
    ours = {(e["action"], e["status"]) for e in trail if e["resource"].endswith((slow["run_id"] + "/cancel",
                                                                                  flaky["run_id"] + "/retry"))}
    assert ours == {("cancel_run", 202), ("retry_run", 202), ("retry_run", 409)}


def test_a_viewer_is_refused_a_start_and_the_broker_never_sees_it(api):
    key = f"viewer-{uuid.uuid4()}"
    with http(api, "viewer") as client:
        refused = client.post("/runs", json={"workflow": "api-echo"}, headers={"Idempotency-Key": key})
        found = client.get("/runs", params={"idempotency_key": key}).json()["items"]
    assert refused.status_code == 403 and refused.json()["error"]["code"] == "forbidden"
    assert found == []


def test_the_python_client_starts_waits_cancels_and_retries_through_the_api_and_through_the_broker(api):
    env = api["env"]
    over_api = Client(api_url=api["url"], api_key=api["tokens"]["operator"])
    direct = Client(env["MINIFLOW_BROKER_URL"], env["MINIFLOW_NAMESPACE"], database_url=env["MINIFLOW_DATABASE_URL"],
                    key=api["tokens"]["operator"])
    with over_api, direct:
        for client in (over_api, direct):
            result = client.start("api-echo", {"token": SECRET, "n": 3}).wait(timeout=60)
            assert result.succeeded and result.outputs["b"]["params"]["n"] == 3
            assert result.outputs["a"]["params"]["token"] != SECRET
            slow = client.start("api-slow")
            poll(lambda: slow.run_id, what="the slow run to exist")  # noqa: B023  (polled at once)
            assert slow.cancel("client test")
            assert slow.wait(timeout=60).status == "cancelled"
            flaky = client.start("api-flaky")
            assert flaky.wait(timeout=60).status == "failed"
            assert flaky.retry().wait(timeout=60).succeeded
        with pytest.raises(ApiError) as missing:
            over_api.get("00000000-0000-0000-0000-000000000000")
    assert missing.value.status == 404 and missing.value.code == "unknown_run"


def test_schemathesis_finds_no_server_error_and_no_answer_outside_the_schema(api, tmp_path: Path):
    """The OpenAPI fuzzer against the running API with an admin key (few examples: CI time)."""
    done = subprocess.run(
        [str(BIN / "schemathesis"), "run", f"{api['url']}/openapi.json", "--header",
         f"Authorization: Bearer {api['tokens']['admin']}", "--max-examples", "8", "--checks",
         "not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance",
         "--phases", "examples,fuzzing", "--no-color", "--seed", "1"],
        cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-6000:] + done.stderr[-2000:]
    assert api["tokens"]["admin"] not in (api["server"].log_path.read_text())
