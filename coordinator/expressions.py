"""A small, safe expression language over plain data: no Python is evaluated.

An expression is parsed with Python's grammar (``ast``) and then interpreted node by node; only these
forms are allowed: literals (numbers, strings, True/False/None, also spelt true/false/null as in YAML
and JSON, lists, dicts, tuples), names bound by
the caller (e.g. ``params``, ``inputs``, ``attempt``), ``a.b`` and ``a["b"]`` / ``a[0]`` lookups in
mappings and lists, arithmetic (``+ - * / // %``), comparisons (including ``in``), ``and``/``or``/
``not``, ``x if c else y``, and calls of the functions in ``FUNCTIONS``. No attribute of a Python
object is ever read (``a.b`` looks up the key ``b``), no other call is possible, and sizes are bounded,
so an expression written by a user cannot run code, read files or loop.

    evaluate("{'rows': inputs.load.rows * 2}", {"inputs": {"load": {"rows": 3}}})  -> {'rows': 6}
"""

from __future__ import annotations

import ast
import operator
from collections.abc import Callable, Mapping
from typing import Any

from miniflow.protocol.errors import CoordinatorError

MAX_SOURCE = 2000
MAX_NODES = 200
MAX_VALUE = 100_000  # length of a string or list an expression may build
CONSTANTS = {"True": True, "False": False, "None": None, "true": True, "false": False, "null": None}

FUNCTIONS: dict[str, Callable[..., Any]] = {
    "len": len, "str": str, "int": int, "float": float, "bool": bool, "abs": abs, "round": round,
    "min": min, "max": max, "sum": sum, "sorted": sorted, "lower": lambda s: str(s).lower(),
    "upper": lambda s: str(s).upper(), "keys": lambda m: list(m), "get": lambda m, k, d=None: m.get(k, d),
}
_BINARY: dict[type, Callable[[Any, Any], Any]] = {
    ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv, ast.Mod: operator.mod,
}
_COMPARE: dict[type, Callable[[Any, Any], Any]] = {
    ast.Eq: operator.eq, ast.NotEq: operator.ne, ast.Lt: operator.lt, ast.LtE: operator.le, ast.Gt: operator.gt,
    ast.GtE: operator.ge, ast.In: lambda a, b: a in b, ast.NotIn: lambda a, b: a not in b,
}


class ExpressionError(CoordinatorError, ValueError):
    """The expression cannot be parsed, uses a form that is not allowed, or fails on its data."""


def compile_expression(source: str) -> ast.expr:
    """Parse and check an expression (ExpressionError naming what is wrong); evaluate it with ``run``."""
    if not isinstance(source, str) or not source.strip():
        raise ExpressionError("an expression must be a non-empty string")
    if len(source) > MAX_SOURCE:
        raise ExpressionError(f"an expression is at most {MAX_SOURCE} characters (this one has {len(source)})")
    try:
        tree = ast.parse(source.strip(), mode="eval")
    except SyntaxError as exc:
        raise ExpressionError(f"not a valid expression: {exc.msg} (column {exc.offset})") from None
    nodes = list(ast.walk(tree))
    if len(nodes) > MAX_NODES:
        raise ExpressionError(f"an expression has at most {MAX_NODES} parts")
    for node in nodes:
        if not isinstance(node, _ALLOWED):
            raise ExpressionError(f"{type(node).__name__} is not allowed in an expression "
                                  "(allowed: literals, names, lookups, arithmetic, comparisons, and/or/not, "
                                  f"x if c else y, and the functions {', '.join(sorted(FUNCTIONS))})")
        if isinstance(node, ast.Call) and not (isinstance(node.func, ast.Name) and node.func.id in FUNCTIONS):
            raise ExpressionError("only these functions may be called: " + ", ".join(sorted(FUNCTIONS)))
        if isinstance(node, ast.Call) and node.keywords:
            raise ExpressionError("functions take positional arguments only")
    return tree.body


def names_in(tree: ast.expr) -> set[str]:
    """The names an expression reads (not its functions, nor True/False/None)."""
    called = {id(n.func) for n in ast.walk(tree) if isinstance(n, ast.Call)}
    return {n.id for n in ast.walk(tree) if isinstance(n, ast.Name) and id(n) not in called
            and n.id not in CONSTANTS}


def evaluate(source: str, names: Mapping[str, Any]) -> Any:
    """Compile and run ``source`` with ``names`` bound."""
    return run(compile_expression(source), names)


def run(node: ast.expr, names: Mapping[str, Any]) -> Any:
    try:
        value = _eval(node, names)
    except ExpressionError:
        raise
    except (TypeError, ValueError, KeyError, IndexError, ZeroDivisionError, OverflowError) as exc:
        raise ExpressionError(f"{type(exc).__name__}: {exc}") from None
    return value


def _eval(node: ast.expr, names: Mapping[str, Any]) -> Any:
    handler = _HANDLERS.get(type(node))
    if handler is None:
        raise ExpressionError(f"{type(node).__name__} is not allowed in an expression")
    return handler(node, names)


def _name(node: Any, names: Mapping[str, Any]) -> Any:
    if node.id in CONSTANTS:
        return CONSTANTS[node.id]
    if node.id not in names:
        raise ExpressionError(f"unknown name {node.id!r} (known: {', '.join(sorted(names))})")
    return names[node.id]


def _dict(node: Any, names: Mapping[str, Any]) -> Any:
    if any(k is None for k in node.keys):
        raise ExpressionError("** in a mapping is not allowed")
    return {_eval(k, names): _eval(v, names) for k, v in zip(node.keys, node.values, strict=True)}


def _unary(node: Any, names: Mapping[str, Any]) -> Any:
    value = _eval(node.operand, names)
    return not value if isinstance(node.op, ast.Not) else -value if isinstance(node.op, ast.USub) else +value


def _boolean(node: Any, names: Mapping[str, Any]) -> Any:
    conjunction = isinstance(node.op, ast.And)
    result: Any = conjunction
    for part in node.values:
        result = _eval(part, names)
        if bool(result) != conjunction:  # and: the first false part; or: the first true one
            return result
    return result


def _compare(node: Any, names: Mapping[str, Any]) -> Any:
    left = _eval(node.left, names)
    for op, right_node in zip(node.ops, node.comparators, strict=True):
        right = _eval(right_node, names)
        if not _COMPARE[type(op)](left, right):
            return False
        left = right
    return True


def _call(node: Any, names: Mapping[str, Any]) -> Any:
    return _bounded(FUNCTIONS[node.func.id](*[_eval(a, names) for a in node.args]))


_HANDLERS: dict[type, Callable[[Any, Mapping[str, Any]], Any]] = {
    ast.Constant: lambda n, _: n.value,
    ast.Name: _name,
    ast.Attribute: lambda n, names: _lookup(_eval(n.value, names), n.attr),
    ast.Subscript: lambda n, names: _lookup(_eval(n.value, names), _eval(n.slice, names)),
    ast.List: lambda n, names: [_eval(e, names) for e in n.elts],
    ast.Tuple: lambda n, names: [_eval(e, names) for e in n.elts],
    ast.Dict: _dict,
    ast.BinOp: lambda n, names: _bounded(_BINARY[type(n.op)](_eval(n.left, names), _eval(n.right, names))),
    ast.UnaryOp: _unary,
    ast.BoolOp: _boolean,
    ast.Compare: _compare,
    ast.IfExp: lambda n, names: _eval(n.body, names) if _eval(n.test, names) else _eval(n.orelse, names),
    ast.Call: _call,
}


def _lookup(container: Any, key: Any) -> Any:
    if isinstance(container, Mapping):
        if key not in container:
            raise ExpressionError(f"no key {key!r} (keys: {', '.join(map(str, list(container)[:20]))})")
        return container[key]
    if isinstance(container, (list, tuple, str)) and isinstance(key, int) and not isinstance(key, bool):
        if not -len(container) <= key < len(container):
            raise ExpressionError(f"index {key} is out of range (length {len(container)})")
        return container[key]
    raise ExpressionError(f"cannot look up {key!r} in a {type(container).__name__}")


def _bounded(value: Any) -> Any:
    if isinstance(value, (str, list, tuple)) and len(value) > MAX_VALUE:
        raise ExpressionError(f"an expression may build values of at most {MAX_VALUE} items")
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) > 10 ** 30:
        raise ExpressionError("a number out of range")
    return value


_ALLOWED = (ast.Expression, ast.Constant, ast.Name, ast.Load, ast.Attribute, ast.Subscript, ast.List, ast.Tuple,
            ast.Dict, ast.BinOp, ast.UnaryOp, ast.BoolOp, ast.Compare, ast.IfExp, ast.Call, ast.And, ast.Or,
            ast.Not, ast.USub, ast.UAdd, *(_BINARY), *(_COMPARE))
