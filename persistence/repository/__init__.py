"""Queries, in SQLAlchemy Core, each run inside a transaction the caller owns, by table:

    definitions    stored workflow versions (immutable)
    runs           runs and their steps; the run row is the lock of its state
    counters       a run's open ends and each join's waiting needs (a result reads no other step)
    gates          the gate of a workflow with concurrency limits; its running and queued runs
    pools          the slots of step pools with a limit; the steps holding or waiting for one
    cache          the result cache of steps
    artifacts      the artifact digests rows refer to (what gc keeps)
    maps           the instances of map steps
    attempts       recorded attempts, unique per (run, step, attempt); the lock-record-read of a result
    outbox         messages committed with a state change, waiting to be published
    dead_letters   the archive of rejected messages
    requests       handled retry requests (a redelivery is not a second retry)
    schedules      schedules and the tick ledger of the cron timer
    keys           the core's signing keys and client (API) keys
    workers        the workers registry (heartbeats of every process)
    sessions       the web UI's sessions

Nothing here commits: callers hold ``Database.transaction()`` so that a state change and the
outbox rows it implies commit together. Durable dedupe is done by unique keys with
INSERT ... ON CONFLICT DO NOTHING (Postgres and SQLite alike). Rows come back as the typed rows of
``persistence.rows``. The Postgres-only fast path (batched writes, prepared statements) is in
``persistence.fastpath``; ``batched_writes`` is re-exported here for the coordinator.
"""

from ..fastpath import batched_writes
from . import keys, schedules, sessions, workers
from .artifacts import texts_with_refs
from .attempts import get_attempt, get_attempts, insert_attempt, record_and_lock
from .cache import cache_clear, cache_get, cache_list, cache_put, cache_stats
from .counters import Counted, set_counters, step_succeeded
from .dead_letters import dead_letters_for_message, insert_dead_letter, list_dead_letters, prune_dead_letters
from .definitions import get_definition, latest_version, list_definitions, save_definition, spec_checksum
from .gates import count_running, lock_gate, queued_runs, workflows_with_queued_runs
from .maps import end_map_instances, map_element_ended, map_instances, map_results
from .outbox import add_outbox, claim_stale_outbox, count_outbox, delete_outbox
from .pools import (
    clear_ended,
    list_pools,
    lock_pool,
    lock_run_unless_taken,
    pool_limits,
    pools_with_waiting_steps,
    set_pool_slots,
    slots_in_use,
    waiting_for_slots,
)
from .requests import mark_handled, prune_handled, request_handled
from .runs import (
    find_run,
    get_needs,
    get_run,
    get_step,
    get_steps,
    insert_run,
    insert_steps,
    list_runs,
    lock_run,
    lock_run_with_step,
    mark_queued_attempt,
    next_attempts,
    overdue_results,
    overdue_run_ids,
    page_runs,
    run_id_for_key,
    runs_after,
    unadvanced_attempts,
    update_run,
    update_step,
    update_steps,
    update_steps_in_status,
)

__all__ = [
    "clear_ended", "list_pools", "lock_pool", "lock_run_unless_taken", "pool_limits", "pools_with_waiting_steps",
    "set_pool_slots", "slots_in_use", "waiting_for_slots",
    "texts_with_refs",
    "end_map_instances", "map_element_ended", "map_instances", "map_results",
    "cache_clear", "cache_get", "cache_list", "cache_put", "cache_stats",
    "count_running", "lock_gate", "queued_runs", "workflows_with_queued_runs",
    "Counted", "get_needs", "get_step", "next_attempts", "set_counters", "step_succeeded", "update_steps_in_status",
    "add_outbox", "batched_writes", "claim_stale_outbox", "count_outbox", "dead_letters_for_message", "delete_outbox",
    "find_run", "get_attempt", "get_attempts", "get_definition", "get_run", "get_steps", "insert_attempt",
    "insert_dead_letter", "insert_run", "insert_steps", "keys", "latest_version", "list_dead_letters",
    "list_definitions",
    "list_runs", "lock_run", "lock_run_with_step", "mark_handled", "mark_queued_attempt", "overdue_results",
    "overdue_run_ids", "page_runs", "prune_dead_letters", "prune_handled", "record_and_lock", "request_handled",
    "run_id_for_key", "runs_after", "save_definition", "schedules", "sessions",
    "spec_checksum", "unadvanced_attempts", "update_run", "update_step", "update_steps", "workers",
]
