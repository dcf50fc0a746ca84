"""Freed memory goes back to the system (ops/memory.py), measured on this process's own heap."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from miniflow.ops import memory

glibc = pytest.mark.skipif(memory._LIBC is None, reason="malloc_trim and mallopt are glibc's")


@glibc
def test_a_fragmented_heap_shrinks_when_trimmed():
    """100 MB of 1 KiB blocks freed but for one in a hundred (so the heap's top cannot shrink by
    itself): resident memory drops by most of it once trimmed."""
    script = textwrap.dedent("""
        from pathlib import Path
        from miniflow.ops import memory

        def rss_mb():
            line = next(x for x in Path("/proc/self/status").read_text().splitlines() if x.startswith("VmRSS:"))
            return int(line.split()[1]) / 1024

        blocks = [bytearray(1024) for _ in range(100_000)]
        kept = blocks[::100]
        del blocks
        before = rss_mb()
        trimmed = memory.trim()
        print(before, rss_mb(), trimmed, len(kept))
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=True)
    before, after, trimmed, _ = out.stdout.split()
    assert trimmed == "True"
    assert float(before) - float(after) > 50, out.stdout  # of the ~100 MB freed


@glibc
def test_the_arena_cap_is_taken_and_the_trimmer_waits_its_interval(monkeypatch):
    assert memory.cap_arenas(16) is True  # glibc's own default on 2 cores (8 per core): nothing changes here
    calls: list[int] = []

    def counted() -> bool:
        calls.append(1)
        return True

    monkeypatch.setattr(memory, "trim", counted)
    trimmer = memory.Trimmer(every_s=3600)
    trimmer.tick()
    assert calls == []
    trimmer = memory.Trimmer(every_s=0)
    trimmer.tick()
    trimmer.tick()
    assert calls == [1, 1]


@glibc
def test_with_the_mmap_threshold_fixed_freed_large_buffers_leave_at_once():
    """glibc raises its mmap threshold when a mapped block is freed, so the next large buffers come
    from the heap and stay resident (pinned by a small block after them); fixed, each large buffer
    is mapped on its own and returned the moment it is freed."""
    script = textwrap.dedent("""
        import sys
        from pathlib import Path
        from miniflow.ops import memory

        def rss_mb():
            line = next(x for x in Path("/proc/self/status").read_text().splitlines() if x.startswith("VmRSS:"))
            return int(line.split()[1]) / 1024

        if sys.argv[1] == "fixed":
            assert memory.fix_mmap_threshold()
        first = bytearray(4 * 1024 * 1024)  # mapped, then freed: glibc's threshold moves up to 4 MiB
        del first
        buffers, pins = [], []
        for _ in range(100):
            buffers.append(bytearray(300 * 1024))
            pins.append(bytearray(1024))  # over pymalloc's 512 bytes: from glibc, right after the buffer
        before = rss_mb()
        del buffers
        print(before - rss_mb())
    """)
    freed = {}
    for mode in ("fixed", "default"):
        out = subprocess.run([sys.executable, "-c", script, mode], capture_output=True, text=True, timeout=60,
                             check=True)
        freed[mode] = float(out.stdout.strip())
    assert freed["fixed"] > 25, freed  # of the ~30 MB of buffers
    assert freed["default"] < 5, freed  # what the fix is for: without it they stay


def test_a_worker_prefetches_one_message_per_thread_unless_dramatiqs_setting_says_otherwise(monkeypatch):
    from dramatiq.brokers.stub import StubBroker

    from miniflow.ops.worker import _dramatiq_worker

    broker = StubBroker()
    monkeypatch.delenv("dramatiq_queue_prefetch", raising=False)
    assert _dramatiq_worker(broker, 6, {"q"}).queue_prefetch == 6  # dramatiq's own default is twice that
    monkeypatch.setenv("dramatiq_queue_prefetch", "40")
    assert _dramatiq_worker(broker, 6, {"q"}).queue_prefetch == 40  # the operator's choice stands
    monkeypatch.setenv("dramatiq_queue_prefetch", "0")  # dramatiq's "unset"
    assert _dramatiq_worker(broker, 6, {"q"}).queue_prefetch == 6
