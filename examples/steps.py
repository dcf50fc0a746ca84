"""Steps of the example workflows. Run an executor with `miniflow worker --steps examples.steps`.

csv-report: load a CSV of sales, clean it, fan out to three aggregations in parallel, then write
a Markdown report. diamond: a -> (b, c) -> d with small arithmetic, for tests and benchmarks.
"""

from __future__ import annotations

import csv
import os
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

from miniflow import StepContext, step


@step("csv.load")
def load_csv(ctx: StepContext) -> dict[str, Any]:
    """Read and clean the sales CSV: skip rows without units, count returns, normalise regions."""
    path = Path(ctx.params["input"])
    if not path.is_file():
        raise FileNotFoundError(f"input file {str(path)!r} does not exist")
    rows, skipped, returns = [], 0, 0
    with path.open(newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        missing = {"date", "region", "product", "units", "unit_price"} - set(reader.fieldnames or [])
        if missing:
            raise ValueError(f"{path} lacks column(s) {sorted(missing)}")
        for record in reader:
            if not record["units"].strip():
                skipped += 1
                continue
            units = int(record["units"])
            if units < 0:
                returns += 1
            rows.append({"date": record["date"], "region": record["region"].strip().upper(),
                         "product": record["product"], "units": units,
                         "revenue": round(units * float(record["unit_price"]), 2)})
    return {"rows": rows, "skipped": skipped, "returns": returns, "source": str(path)}


def _rows(ctx: StepContext) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = ctx.inputs["load"]["rows"]
    return rows


@step("csv.by_region")
def by_region(ctx: StepContext) -> dict[str, float]:
    totals: dict[str, float] = defaultdict(float)
    for row in _rows(ctx):
        totals[row["region"]] += row["revenue"]
    return {k: round(v, 2) for k, v in sorted(totals.items())}


@step("csv.by_product")
def by_product(ctx: StepContext) -> list[dict[str, Any]]:
    units: dict[str, int] = defaultdict(int)
    revenue: dict[str, float] = defaultdict(float)
    for row in _rows(ctx):
        units[row["product"]] += row["units"]
        revenue[row["product"]] += row["revenue"]
    top = int(ctx.config.get("top", 3))
    ranked = sorted(revenue, key=lambda p: revenue[p], reverse=True)[:top]
    return [{"product": p, "units": units[p], "revenue": round(revenue[p], 2)} for p in ranked]


@step("csv.by_month")
def by_month(ctx: StepContext) -> dict[str, float]:
    totals: dict[str, float] = defaultdict(float)
    for row in _rows(ctx):
        totals[row["date"][:7]] += row["revenue"]
    return {k: round(v, 2) for k, v in sorted(totals.items())}


@step("csv.report")
def write_report(ctx: StepContext) -> dict[str, Any]:
    """Join the three aggregations into a Markdown report; returns its path and the headline."""
    regions, products, months = ctx.inputs["by_region"], ctx.inputs["by_product"], ctx.inputs["by_month"]
    total = round(sum(regions.values()), 2)
    lines = [f"# Sales report ({ctx.params['title']})", "", f"Total revenue: {total:,.2f}", "",
             "## By region", "", "| region | revenue |", "|---|---:|"]
    lines += [f"| {r} | {v:,.2f} |" for r, v in regions.items()]
    lines += ["", "## Top products", "", "| product | units | revenue |", "|---|---:|---:|"]
    lines += [f"| {p['product']} | {p['units']} | {p['revenue']:,.2f} |" for p in products]
    lines += ["", "## By month", "", "| month | revenue |", "|---|---:|"]
    lines += [f"| {m} | {v:,.2f} |" for m, v in months.items()]
    out_dir = Path(ctx.params["out_dir"])
    out_dir.mkdir(parents=True, exist_ok=True)
    target = out_dir / f"sales-report-{ctx.run_id[:8]}.md"
    # Write under a temporary name and rename: a redelivered attempt leaves one complete file.
    tmp = target.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_text("\n".join(lines) + "\n", encoding="utf-8")
    tmp.replace(target)
    best = max(regions, key=lambda r: regions[r])
    return {"report": str(target), "total_revenue": total, "best_region": best,
            "top_product": products[0]["product"] if products else None}


# -- diamond ----------------------------------------------------------------------------------------
@step("diamond.source")
def source(ctx: StepContext) -> int:
    return int(ctx.params.get("x", 1))


@step("diamond.double")
def double(ctx: StepContext) -> int:
    return int(ctx.inputs["a"]) * 2


@step("diamond.square")
def square(ctx: StepContext) -> int:
    return int(ctx.inputs["a"]) ** 2


@step("diamond.sum")
def total(ctx: StepContext) -> int:
    return sum(int(v) for v in ctx.inputs.values())


@step("demo.sleep")
def nap(ctx: StepContext) -> float:
    """Sleep config.seconds (an I/O-bound step for scale tests and timeouts)."""
    seconds = float(ctx.config.get("seconds", ctx.params.get("sleep", 0.01)))
    time.sleep(seconds)
    return seconds


# -- fan-out (a map step) --------------------------------------------------------------------------
@step("fanout.split")
def split(ctx: StepContext) -> dict[str, Any]:
    """{"numbers": [1, 2, ... params.n]}: the list the map step runs over."""
    return {"numbers": list(range(1, int(ctx.params.get("n", 10)) + 1))}


@step("fanout.square")
def square_one(ctx: StepContext) -> int:
    """One element of the map: its number squared."""
    return int(ctx.item) ** 2


@step("fanout.total")
def sum_all(ctx: StepContext) -> dict[str, Any]:
    """The map's results (a list, in order; null for an element that failed under on_failure: continue)."""
    squares = ctx.inputs["square"]
    return {"count": len(squares), "sum": sum(v for v in squares if v is not None)}
