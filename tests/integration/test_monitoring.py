"""The monitors on real RabbitMQ and Postgres: the workers registry (alive, gone after a SIGKILL,
stopped after a clean stop), the queue monitor and "why" for a pool nobody consumes, and the
Prometheus metrics of each process scraped after a known set of runs."""

from __future__ import annotations

import json
import os
import signal
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from miniflow.actors.heartbeat import GONE_AFTER

from .conftest import BROKER_URL, TimerProcess, WorkerProcess, miniflow, poll, query
from .raw_producer import publish_raw

HEARTBEAT_S = 0.5
POOLED = "name: pooled\nsteps:\n  - {name: only, task: test.echo, queue: lonely}\n"
# a's output (100 KiB, inline) makes its result and b's (echoing it) large bodies at the coordinator
OK = ("name: metered\nsteps:\n  - {name: a, task: test.blob, config: {kib: 100}}\n"
      "  - {name: b, task: test.echo, needs: [a]}\n")
FAILING = "name: metered-fail\nsteps:\n  - {name: boom, task: test.boom, retries: 1, backoff: {initial: 0.05}}\n"


@pytest.fixture
def space(env: dict[str, str], tmp_path: Path) -> Iterator[dict[str, str]]:
    """A namespace of this test's own, its workflows deployed."""
    from miniflow.actors.broker import delete_topology
    from miniflow.protocol.names import QueueNames

    own = dict(env, MINIFLOW_NAMESPACE=f"{env['MINIFLOW_NAMESPACE']}_m{uuid.uuid4().hex[:4]}")
    assert miniflow(own, "db", "upgrade").returncode == 0
    for name, text in (("pooled", POOLED), ("ok", OK), ("failing", FAILING)):
        path = tmp_path / f"{name}.yaml"
        path.write_text(text)
        deployed = miniflow(own, "deploy", str(path))
        assert deployed.returncode == 0, deployed.stderr
    yield own
    delete_topology(own["MINIFLOW_BROKER_URL"], QueueNames(own["MINIFLOW_NAMESPACE"]), pools=["lonely"])


def _workers(env: dict[str, str]) -> dict[str, dict[str, Any]]:
    shown = miniflow(env, "workers", "--json")
    assert shown.returncode == 0, shown.stderr
    return {w["node"]: w for w in json.loads(shown.stdout)["workers"]}


def _node(worker: WorkerProcess) -> str:
    ready = next(line for line in worker.lines if "miniflow worker ready" in line)
    return ready.split("node=", 1)[1].split()[0]


def _metrics_url(worker: WorkerProcess) -> str:
    ready = next(line for line in worker.lines if "miniflow worker ready" in line)
    return ready.split("metrics=", 1)[1].split()[0].replace("0.0.0.0", "127.0.0.1")  # noqa: S104


def test_workers_show_alive_with_their_queues_then_gone_after_sigkill_and_stopped_after_a_clean_stop(
        space: dict[str, str], tmp_path: Path) -> None:
    beat = ["--heartbeat", str(HEARTBEAT_S)]
    core = WorkerProcess(space, ["--role", "coordinator", "--role", "results", "--threads", "2", *beat],
                         tmp_path / "core.log")
    executor = WorkerProcess(space, ["--steps", "tests.steps_for_tests", "--queue", "gpu", "--threads", "2", *beat],
                             tmp_path / "exec.log")
    timer = TimerProcess(space, tmp_path / "timer.log")
    try:
        core.wait_ready()
        executor.wait_ready()
        timer.wait_ready()
        timer_node = next(x for x in timer.lines if "miniflow timer ready" in x).split("node=", 1)[1].split()[0]
        timers = poll(lambda: _workers(space).get(timer_node), timeout=30, what="the timer in the registry")
        assert timers["kind"] == "timer" and timers["state"] == "alive"
        timer.stop()
        assert _workers(space)[timer_node]["state"] == "stopped"
        core_node, exec_node = _node(core), _node(executor)
        seen = poll(lambda: (w := _workers(space)) and exec_node in w and core_node in w and w, timeout=30,
                    what="both workers in the registry")
        names = f"{space['MINIFLOW_NAMESPACE']}.steps"
        assert seen[exec_node]["state"] == "alive" and seen[core_node]["state"] == "alive"
        assert set(seen[exec_node]["queues"]) == {names, f"{names}.gpu"} and seen[exec_node]["roles"] == ["executor"]
        assert seen[core_node]["roles"] == ["coordinator", "results"]
        assert seen[exec_node]["threads"] == 2 and seen[exec_node]["gone_after_s"] == GONE_AFTER * HEARTBEAT_S

        os.kill(executor.proc.pid, signal.SIGKILL)
        executor.proc.wait(timeout=10)
        # Gone after GONE_AFTER heartbeats of silence; the poll allows for a loaded machine.
        poll(lambda: _workers(space)[exec_node]["state"] == "gone", timeout=GONE_AFTER * HEARTBEAT_S + 20,
             what="the killed executor to be gone")
        assert _workers(space)[core_node]["state"] == "alive"

        core.stop()  # SIGTERM: a clean stop says so in its last heartbeat
        assert core.proc.returncode == 0
        assert _workers(space)[core_node]["state"] == "stopped"
        table = miniflow(space, "workers")
        assert "stopped" in table.stdout and "gone" in table.stdout
    finally:
        timer.stop()
        executor.stop()
        core.stop()


def test_a_pool_without_consumers_is_named_by_the_queue_monitor_and_why_and_drains_once_an_executor_comes(
        space: dict[str, str], tmp_path: Path) -> None:
    core = WorkerProcess(space, ["--role", "coordinator", "--role", "results", "--threads", "2"], tmp_path / "c.log")
    late: WorkerProcess | None = None
    try:
        core.wait_ready()
        key = f"pooled-{uuid.uuid4()}"
        assert miniflow(space, "start", "pooled", "--key", key).returncode == 0
        db = space["MINIFLOW_DATABASE_URL"]
        run_id = poll(lambda: query(db, "select id from runs where idempotency_key = %s", key), timeout=60,
                      what="the run")[0][0]
        lonely = f"{space['MINIFLOW_NAMESPACE']}.steps.lonely"

        def waiting() -> dict[str, Any] | None:
            report = json.loads(miniflow(space, "queues", "--json").stdout)
            stat = next((q for q in report["queues"] if q["name"] == lonely), None)
            return report if stat and stat["exists"] and stat["ready"] == 1 else None

        report = poll(waiting, timeout=60, what="the step to wait in its pool's queue")
        stat = next(q for q in report["queues"] if q["name"] == lonely)
        assert stat["consumers"] == 0 and stat["role"] == "steps" and stat["pool"] == "lonely"
        assert stat["oldest_age_s"] is not None and stat["oldest_age_s"] >= 0  # from the database
        assert report["source"] in ("passive", "management")
        answer = json.loads(miniflow(space, "why", run_id, "only", "--json").stdout)
        assert answer["queue"] == lonely and answer["status"] == "queued" and answer["consumers"] == 0
        assert answer["executors"] == [] and "no executor consumes" in answer["reasons"][0]
        assert "--queue lonely" in answer["reasons"][0]
        text = miniflow(space, "why", run_id, "only")
        assert text.returncode == 0 and "no executor consumes" in text.stdout
        snapshot = json.loads(miniflow(space, "monitor", "--json").stdout)
        # runs are counted per database, which this test session's namespaces share: at least this one
        assert snapshot["waiting"].get(lonely) == 1 and snapshot["active_runs"] >= 1
        assert any(q["name"] == lonely and q["consumers"] == 0 for q in snapshot["queues"]["queues"])
        shown = miniflow(space, "monitor", "--once")
        assert shown.returncode == 0 and lonely in shown.stdout and "workers" in shown.stdout

        late = WorkerProcess(space, ["--steps", "tests.steps_for_tests", "--queue", "lonely", "--threads", "2"],
                             tmp_path / "late.log")
        late.wait_ready()
        poll(lambda: query(db, "select status from runs where id = %s", run_id)[0][0] == "succeeded", timeout=60,
             what="the run to finish once its pool has an executor")
        after = json.loads(miniflow(space, "why", run_id, "only", "--json").stdout)
        assert "ended" in after["reasons"][0]
        stats = json.loads(miniflow(space, "stats", "--since", "1h", "--workflow", "pooled", "--json").stdout)
        assert stats["runs"] == 1 and stats["by_status"]["succeeded"] == 1 and stats["success_rate"] == 1.0
    finally:
        if late is not None:
            late.stop()
        core.stop()


def _scrape(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = httpx.get(url, timeout=10).text
    out: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def _value(samples: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def test_metrics_of_each_process_count_a_known_set_of_runs(space: dict[str, str], tmp_path: Path) -> None:
    core = WorkerProcess(space, ["--role", "coordinator", "--role", "results", "--threads", "2",
                                 "--metrics-port", "0"], tmp_path / "core.log")
    executor = WorkerProcess(space, ["--steps", "tests.steps_for_tests", "--threads", "2", "--metrics-port", "0"],
                             tmp_path / "exec.log")
    try:
        core.wait_ready()
        executor.wait_ready()
        db = space["MINIFLOW_DATABASE_URL"]
        keys = [f"m-{uuid.uuid4()}" for _ in range(3)]
        for key in keys:
            assert miniflow(space, "start", "metered", "--key", key).returncode == 0
        bad = f"f-{uuid.uuid4()}"
        assert miniflow(space, "start", "metered-fail", "--key", bad).returncode == 0
        publish_raw(BROKER_URL, f"{space['MINIFLOW_NAMESPACE']}.ingress", b"\xc1 not msgpack")
        done = f"select count(*) from runs where status in ('succeeded', 'failed') and idempotency_key in " \
               f"({','.join(['%s'] * 4)})"
        poll(lambda: query(db, done, *keys, bad)[0][0] == 4, timeout=120, what="the four runs to end")
        poll(lambda: query(db, "select count(*) from dead_letters where code = 'malformed'")[0][0] >= 1,
             timeout=60, what="the malformed message to be archived")

        core_url, exec_url = _metrics_url(core), _metrics_url(executor)

        def settled() -> dict[tuple[str, tuple[tuple[str, str], ...]], float] | None:
            # the scrape-time gauges are read at most every 5 s: poll until they show both workers
            s = _scrape(core_url)
            ended = _value(s, "miniflow_runs_finished_total", workflow="metered", status="succeeded") == 3
            return s if ended and _value(s, "miniflow_workers", state="alive") == 2 else None

        c = poll(settled, timeout=60, what="the coordinator to count three succeeded runs and two live workers")
        assert _value(c, "miniflow_runs_started_total", workflow="metered") == 3
        assert _value(c, "miniflow_runs_started_total", workflow="metered-fail") == 1
        assert _value(c, "miniflow_runs_finished_total", workflow="metered-fail", status="failed") == 1
        assert _value(c, "miniflow_messages_rejected_total", reason="malformed") == 1
        assert _value(c, "miniflow_dead_letters_total", reason="malformed") == 1
        assert _value(c, "miniflow_worker_threads") == 2
        assert _value(c, "miniflow_outbox_publish_seconds_count") > 0
        # sized on RabbitMQ's consumer: the two large results of each metered run took their turns
        # (a redelivered one would count again)
        assert _value(c, "miniflow_large_bodies_total", waited="yes") + \
            _value(c, "miniflow_large_bodies_total", waited="no") >= 6
        assert ("miniflow_runs_active", (("status", "running"),)) in c  # per database: other tests' runs count too
        assert ("miniflow_outbox_backlog", ()) in c and ("miniflow_oldest_active_run_seconds", ()) in c
        ingress = f"{space['MINIFLOW_NAMESPACE']}.ingress"
        assert _value(c, "miniflow_queue_consumers", queue=ingress) >= 1

        e = _scrape(exec_url)
        assert _value(e, "miniflow_step_attempts_total", workflow="metered", step="a", outcome="succeeded") == 3
        assert _value(e, "miniflow_step_attempts_total", workflow="metered", step="b", outcome="succeeded") == 3
        assert _value(e, "miniflow_step_attempts_total", workflow="metered-fail", step="boom", outcome="failed") == 2
        assert _value(e, "miniflow_step_retries_total", workflow="metered-fail", step="boom") == 1
        assert _value(e, "miniflow_step_duration_seconds_count", workflow="metered", step="a") == 3
        assert _value(e, "miniflow_step_queue_wait_seconds_count", workflow="metered", step="b") == 3
        assert _value(e, "miniflow_messages_total", actor="execute_step", outcome="ok") == 8
        assert not any(name.startswith("miniflow_runs_") for name, _ in e)  # the executor runs no coordinator
        assert all(len(dict(labels).get("run_id", "")) == 0 for _, labels in list(c) + list(e))  # no run ids
    finally:
        executor.stop()
        core.stop()


def test_the_queue_monitor_reads_unacked_counts_rates_and_ages_from_the_management_api_when_it_is_enabled() -> None:
    """A private RabbitMQ with the management plugin (the machine's own is left as it is)."""
    import time

    import pika

    from miniflow.ops.monitor.queues import queue_report
    from miniflow.protocol.names import QueueNames

    from .private_services import PrivateRabbitMQ, port_open

    broker = PrivateRabbitMQ(management=True)
    try:
        port = broker.management_port
        assert port is not None
        poll(lambda: port_open(port), timeout=60, what="the management listener")
        names = QueueNames("mgmt")
        connection = pika.BlockingConnection(pika.URLParameters(broker.url))
        channel = connection.channel()
        for queue in (names.ingress, names.steps):
            channel.queue_declare(queue, durable=True)
        sent = int(time.time()) - 30  # the oldest message's age comes from its timestamp property
        for _ in range(3):
            channel.basic_publish("", names.steps, b"x", pika.BasicProperties(timestamp=sent))
        held = channel.basic_get(names.steps)  # delivered, not acknowledged: "unacked"
        assert held[0] is not None
        api = f"http://127.0.0.1:{port}"

        def counted() -> Any:
            report = queue_report(broker.url, names, management=api)
            stat = report.get(names.steps)
            return report if stat is not None and stat.ready == 2 and stat.unacked == 1 else None

        report = poll(counted, timeout=60, what="the management API to count the messages")
        stat = report.get(names.steps)
        assert report.source == "management" and stat is not None and stat.exists and stat.depth == 3
        assert stat.consumers == 0 and stat.oldest_age_s is not None and stat.oldest_age_s >= 29
        coordinator = report.get(names.coordinator)
        assert coordinator is not None and not coordinator.exists  # never declared
        fallback = queue_report(broker.url, names, management="http://127.0.0.1:9")  # nothing listens there
        steps = fallback.get(names.steps)
        assert fallback.source == "passive" and "not reachable" in fallback.management
        assert steps is not None and steps.ready == 2 and steps.unacked is None and steps.consumers == 0
        connection.close()
    finally:
        broker.close()
