"""End to end on the real RabbitMQ and Postgres, with workers as separate processes via the CLI."""

from __future__ import annotations

import json
import subprocess
import uuid
from pathlib import Path

import pika

from .conftest import BROKER_URL, miniflow, poll, query
from .raw_producer import publish_raw, publish_start


def test_the_diamond_runs_across_processes_and_start_wait_exits_zero(cluster):
    result = miniflow(cluster, "start", "diamond", "-p", "x=5", "--wait", "--timeout", "60", "--json")
    assert result.returncode == 0, result.stderr + result.stdout
    detail = json.loads(result.stdout)
    assert detail["status"] == "succeeded"
    outputs = {s["step"]: s["output"] for s in detail["steps"]}
    assert outputs == {"a": 5, "b": 10, "c": 25, "d": 35}
    shown = json.loads(miniflow(cluster, "runs", "show", detail["id"], "--json").stdout)
    assert {s["step"]: s["attempts"] for s in shown["steps"]} == {"a": 1, "b": 1, "c": 1, "d": 1}
    assert all(s["node"] for s in shown["steps"])
    listed = json.loads(miniflow(cluster, "runs", "list", "--json").stdout)
    assert detail["id"] in [r["id"] for r in listed]


def test_the_csv_example_runs_across_processes_and_writes_its_report(cluster, tmp_path: Path):
    result = miniflow(cluster, "start", "csv-report", "-p", f"out_dir={tmp_path}", "--wait", "--timeout", "60",
                      "--json")
    assert result.returncode == 0, result.stderr + result.stdout
    detail = json.loads(result.stdout)
    report = next(s for s in detail["steps"] if s["step"] == "report")["output"]
    assert Path(report["report"]).read_text().startswith("# Sales report")
    rows = query(cluster["MINIFLOW_DATABASE_URL"],
                 "select output->>'best_region' from run_steps where run_id = %s and step = 'report'", detail["id"])
    assert rows == [(report["best_region"],)]


def test_a_failing_start_wait_exits_non_zero_with_the_reason(cluster):
    result = miniflow(cluster, "start", "diamond", "-p", "x=not-a-number", "--wait", "--timeout", "60")
    assert result.returncode == 1
    assert "ValueError" in result.stdout


def test_a_start_published_with_raw_pika_completes_and_its_outputs_are_in_postgres(cluster):
    key = f"raw-{uuid.uuid4()}"
    publish_start(BROKER_URL, cluster["MINIFLOW_NAMESPACE"], "diamond", {"x": 2}, key)
    db = cluster["MINIFLOW_DATABASE_URL"]

    def finished():
        rows = query(db, "select id, status from runs where idempotency_key = %s", key)
        return rows if rows and rows[0][1] in ("succeeded", "failed") else None

    [(run_id, status)] = poll(finished, what="the raw-pika run to finish")
    assert status == "succeeded"
    outputs = dict(query(db, "select step, output::text from run_steps where run_id = %s", run_id))
    assert outputs == {"a": "2", "b": "4", "c": "4", "d": "8"}


def test_a_malformed_message_lands_in_dead_letters_while_a_good_one_beside_it_completes(cluster):
    ns = cluster["MINIFLOW_NAMESPACE"]
    db = cluster["MINIFLOW_DATABASE_URL"]
    before = query(db, "select count(*) from dead_letters")[0][0]
    publish_raw(BROKER_URL, f"{ns}.ingress", b"\x92\x01\x02")  # an array, not an envelope map
    key = f"good-{uuid.uuid4()}"
    publish_start(BROKER_URL, ns, "diamond", {"x": 1}, key)
    publish_raw(BROKER_URL, f"{ns}.ingress", b"\xde\xff\xff")  # a map header claiming 65535 entries in 3 bytes

    poll(lambda: query(db, "select 1 from runs where idempotency_key = %s and status = 'succeeded'", key),
         what="the good run")
    letters = poll(lambda: (rows := query(db, "select code, queue, length(raw) from dead_letters order by id "
                                          "offset %s", before)) and len(rows) >= 2 and rows,
                   what="two dead letters")
    assert sorted(code for code, _, _ in letters) == ["limit_exceeded", "not_a_map"]
    assert all(queue == f"{ns}.ingress" and size > 0 for _, queue, size in letters)
    connection = pika.BlockingConnection(pika.URLParameters(BROKER_URL))
    try:
        xq = connection.channel().queue_declare(f"{ns}.ingress.XQ", passive=True)
        assert xq.method.message_count >= 2  # RabbitMQ holds them too, in the dead-letter queue
    finally:
        connection.close()


def test_a_start_for_an_unknown_workflow_is_rejected_with_a_reason_the_producer_can_see(cluster):
    checked = miniflow(cluster, "start", "no-such-flow", "--wait", "--timeout", "60")
    assert checked.returncode == 2  # refused before it was published
    assert "is not deployed" in checked.stderr and "nothing was published" in checked.stderr
    published = miniflow(cluster, "start", "no-such-flow", "--no-check", "--wait", "--timeout", "60")
    assert published.returncode == 2  # the coordinator rejected it; --wait prints the archived reason
    assert "start rejected: unknown_workflow" in published.stderr


def test_the_same_start_published_many_times_at_once_makes_one_run(cluster):
    """A producer that re-sends (a lost confirm, a retry loop) must not start the workflow twice, even
    when the copies are handled at the same moment by different coordinator threads."""
    ns, db = cluster["MINIFLOW_NAMESPACE"], cluster["MINIFLOW_DATABASE_URL"]
    key = f"dup-{uuid.uuid4()}"
    for _ in range(8):  # each with its own message id, as separate publishes are
        publish_start(BROKER_URL, ns, "diamond", {"x": 3}, key)
    [(run_id, status)] = poll(lambda: (rows := query(db, "select id, status from runs where idempotency_key = %s",
                                                     key)) and rows[0][1] == "succeeded" and rows,
                              what="the run to succeed")

    def ingress_drained() -> bool:  # every copy has been handled: none ready, none delivered and unacked
        listed = subprocess.run(["rabbitmqctl", "-q", "list_queues", "name", "messages_ready",
                                 "messages_unacknowledged"], capture_output=True, text=True, timeout=60).stdout
        counts = [line.split()[1:] for line in listed.splitlines() if line.split()[:1] == [f"{ns}.ingress"]]
        return counts == [["0", "0"]]

    poll(ingress_drained, what="every copy of the start to be handled")
    attempts = query(db, "select step, attempt from step_attempts where run_id = %s order by step", run_id)
    assert attempts == [("a", 1), ("b", 1), ("c", 1), ("d", 1)]
    assert query(db, "select count(*) from runs where idempotency_key = %s", key) == [(1,)]
