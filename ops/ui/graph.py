"""The DAG of a workflow version laid out for drawing: layered (Sugiyama) layout by grandalf, a
library made for this, computed once per workflow version (definitions are immutable) and drawn as
SVG by the templates, so the page needs no script to show it."""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass

from grandalf.graphs import Edge, Graph, Vertex
from grandalf.layouts import SugiyamaLayout

NODE_W, NODE_H = 150, 34
GAP = 40  # between the components of a graph that is not connected
MARGIN = 12
MAX_NODES = 400  # a bigger graph is shown as the step table only (its layout would take too long)
CACHED = 256


@dataclass(frozen=True)
class Node:
    id: str
    x: float  # the top left corner
    y: float
    label: str


@dataclass(frozen=True)
class Layout:
    nodes: tuple[Node, ...]
    edges: tuple[tuple[str, str, str], ...]  # (source, target, SVG path)
    width: float
    height: float


class _View:
    def __init__(self) -> None:
        self.w, self.h = NODE_W, NODE_H
        self.xy = (0.0, 0.0)


class _EdgeView:
    def __init__(self) -> None:
        self.points: list[tuple[float, float]] = []

    def setpath(self, points: list[tuple[float, float]]) -> None:
        self.points = [(float(x), float(y)) for x, y in points]


def label(name: str, limit: int = 20) -> str:
    return name if len(name) <= limit else name[:limit - 1] + "…"


def layout(steps: Sequence[str], edges: Sequence[tuple[str, str]]) -> Layout | None:
    """Positions for ``steps`` joined by ``edges`` (need -> step), top to bottom; None when there are
    more than MAX_NODES steps."""
    if len(steps) > MAX_NODES or not steps:
        return None
    vertices = {name: Vertex(name) for name in steps}
    for v in vertices.values():
        v.view = _View()
    links = []
    for a, b in edges:
        if a in vertices and b in vertices:
            e = Edge(vertices[a], vertices[b])
            e.view = _EdgeView()
            links.append(e)
    graph = Graph(list(vertices.values()), links)
    offset = 0.0
    placed: dict[str, tuple[float, float]] = {}
    paths: list[tuple[str, str, list[tuple[float, float]]]] = []
    height = 0.0
    for component in graph.C:
        sugiyama = SugiyamaLayout(component)
        sugiyama.init_all()
        sugiyama.draw(3)
        xs = [v.view.xy[0] for v in component.sV]
        ys = [v.view.xy[1] for v in component.sV]
        left, top = min(xs) - NODE_W / 2, min(ys) - NODE_H / 2
        dx, dy = offset - left + MARGIN, MARGIN - top
        for v in component.sV:
            placed[v.data] = (v.view.xy[0] + dx - NODE_W / 2, v.view.xy[1] + dy - NODE_H / 2)
        for e in component.sE:
            points = [(x + dx, y + dy) for x, y in e.view.points]
            paths.append((e.v[0].data, e.v[1].data, points))
        offset += max(xs) - min(xs) + NODE_W + GAP
        height = max(height, max(ys) - min(ys) + NODE_H + 2 * MARGIN)
    nodes = tuple(Node(n, round(placed[n][0], 1), round(placed[n][1], 1), label(n)) for n in steps)
    drawn = tuple((a, b, _path(points)) for a, b, points in paths)
    return Layout(nodes, drawn, round(offset - GAP + 2 * MARGIN, 1), round(height, 1))


def _path(points: list[tuple[float, float]]) -> str:
    if not points:
        return ""
    # grandalf routes from centre to centre: start at the bottom of the source and end at the top of the target
    (x0, y0), (x1, y1) = points[0], points[-1]
    points = [(x0, y0 + NODE_H / 2), *points[1:-1], (x1, y1 - NODE_H / 2)]
    return "M" + " L".join(f"{x:.1f},{y:.1f}" for x, y in points)


class Layouts:
    """Layouts of workflow versions, the last CACHED kept (a version's definition never changes)."""

    def __init__(self) -> None:
        self._cache: OrderedDict[tuple[str, int], Layout | None] = OrderedDict()
        self._lock = threading.Lock()

    def of(self, workflow: str, version: int, steps: Sequence[str], edges: Sequence[tuple[str, str]]) -> Layout | None:
        key = (workflow, version)
        with self._lock:
            if key in self._cache:
                self._cache.move_to_end(key)
                return self._cache[key]
        drawn = layout(steps, edges)
        with self._lock:
            self._cache[key] = drawn
            while len(self._cache) > CACHED:
                self._cache.popitem(last=False)
        return drawn
