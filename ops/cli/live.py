"""The live view of `miniflow run`: each step as it starts and finishes, and on a terminal a table
of the steps that redraws itself."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.live import Live
from rich.table import Table
from rich.text import Text

from miniflow.coordinator import Workflow
from miniflow.protocol.states import StepStatus

from ..terminal import escape_controls, safe_text
from ..views import fmt_ms

RUNNING = "running"  # shown between an executor's started and finished events (not a stored state)


class LiveView:
    def __init__(self, console: Console, workflow: Workflow, quiet: bool = False) -> None:
        self.console = console
        self.workflow = workflow
        self.quiet = quiet
        self.state: dict[str, dict[str, Any]] = {s: {"status": StepStatus.PENDING, "attempt": 0, "ms": None}
                                                 for s in workflow.steps}
        self.live = Live(self._table(), console=console, refresh_per_second=8, transient=True) \
            if console.is_terminal and not quiet else None

    def __enter__(self) -> LiveView:
        if self.live:
            self.live.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.live:
            self.live.__exit__(*exc)

    def _table(self) -> Table:
        table = Table(title=f"{self.workflow.name}", title_justify="left")
        for col in ("step", "status", "attempt", "duration"):
            table.add_column(col)
        for name, st in self.state.items():
            table.add_row(safe_text(name), safe_text(str(st["status"])), str(st["attempt"] or "-"), fmt_ms(st["ms"]))
        return table

    def event(self, kind: str, data: dict[str, Any]) -> None:
        step = data.get("step")
        if step in self.state:
            st = self.state[step]
            st["attempt"] = data.get("attempt", st["attempt"])
            if kind == "step_started":
                st["status"] = RUNNING
                line = Text.assemble((f"▶ {step}", "cyan"), f" started (attempt {st['attempt']})")
            else:
                st["status"] = StepStatus.SUCCEEDED if data.get("ok") else StepStatus.FAILED
                st["ms"] = data.get("duration_ms")
                error = escape_controls(str(data.get("error")))
                line = Text.assemble((f"✔ {step}", "green"), f" finished in {fmt_ms(st['ms'])}") if data.get("ok") \
                    else Text.assemble((f"✘ {step}", "red"), f" failed on attempt {st['attempt']}: {error}")
            if not self.quiet:
                self.console.print(line)
        if self.live:
            self.live.update(self._table())
