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
