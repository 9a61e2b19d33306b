"""Arithmetic in ``capacity`` and ``critical``: parsed once at load, evaluated per node at each poll.

The grammar is the one the ltsp-cluster balancer's files use::

    expr   := term (("+" | "-") term)*
    term   := factor (("*" | "/") factor)*
    factor := ("+" | "-") factor | NUMBER | "$" NAME | "(" expr ")"

NUMBER is decimal (``.7``, ``40``, ``1.5``); ``$NAME`` is any variable the
node's agent reports, and ``$CPUCOUNT`` is its processor count (NBPROC).
Nothing is ever passed to ``eval``: :func:`parse` builds a small tree,
raising :class:`ExprError` (with the column) on anything else, and
:meth:`Expr.evaluate` walks it, raising :class:`EvalError` when a variable
is missing or not a number, or on a division by zero. A constant expression
is folded to one :class:`Const` at parse time, so plain numbers cost nothing.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Callable, Mapping

MAX_LENGTH = 1000
MAX_DEPTH = 50
ALIASES = {"CPUCOUNT": "NBPROC"}
"""Names the ltsp-cluster agent used, and the built-in they stand for."""

_TOKEN = re.compile(r"\s*(?:(?P<num>\d+\.?\d*|\.\d+)|\$(?P<var>[A-Za-z_][A-Za-z0-9_]*)|(?P<op>[-+*/()]))")

Lookup = Callable[[str], object]


class ExprError(ValueError):
    """A syntax error; ``column`` counts from 1."""

    def __init__(self, message: str, column: int) -> None:
        super().__init__(f"{message} at column {column}")
        self.column = column


class EvalError(ArithmeticError):
    """An expression that has no value for this node (a missing variable, a division by zero)."""


def number(value: object) -> float | None:
    """``value`` as a finite float (numeric text accepted, booleans not), or None."""
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        f = float(value)
    elif isinstance(value, str):
        try:
            f = float(value.strip())
        except ValueError:
            return None
    else:
        return None
    return f if math.isfinite(f) else None


class Expr:
    """A node of the tree."""

    def evaluate(self, lookup: Lookup) -> float:
        """The value, reading variables through ``lookup(name)`` (None or missing: :class:`EvalError`)."""
        raise NotImplementedError

    def names(self) -> frozenset[str]:
        """The variables the expression reads."""
        return frozenset()

    @property
    def constant(self) -> float | None:
        """The value when the expression reads no variable, else None."""
        return None


@dataclass(frozen=True)
class Const(Expr):
    """A number."""

    value: float

    def evaluate(self, lookup: Lookup) -> float:
        return self.value

    @property
    def constant(self) -> float | None:
        return self.value

    def __str__(self) -> str:
        return f"{self.value:g}"


@dataclass(frozen=True)
class Var(Expr):
    """``$NAME``."""

    name: str

    def evaluate(self, lookup: Lookup) -> float:
        value = number(lookup(ALIASES.get(self.name, self.name)))
        if value is None:
            raise EvalError(f"${self.name} is missing or not a number")
        return value

    def names(self) -> frozenset[str]:
        return frozenset({ALIASES.get(self.name, self.name)})

    def __str__(self) -> str:
        return f"${self.name}"


@dataclass(frozen=True)
class Neg(Expr):
    """``-x``."""

    operand: Expr

    def evaluate(self, lookup: Lookup) -> float:
        return -self.operand.evaluate(lookup)

    def names(self) -> frozenset[str]:
        return self.operand.names()

    def __str__(self) -> str:
        return f"-{self.operand}"


@dataclass(frozen=True)
class BinOp(Expr):
    """``left OP right``."""

    op: str
    left: Expr
    right: Expr

    def evaluate(self, lookup: Lookup) -> float:
        a, b = self.left.evaluate(lookup), self.right.evaluate(lookup)
        if self.op == "+":
            return a + b
        if self.op == "-":
            return a - b
        if self.op == "*":
            return a * b
        if b == 0:
            raise EvalError("division by zero")
        return a / b

    def names(self) -> frozenset[str]:
        return self.left.names() | self.right.names()

    def __str__(self) -> str:
        return f"({self.left}{self.op}{self.right})"


_FOLD = {"+": lambda a, b: a + b, "-": lambda a, b: a - b, "*": lambda a, b: a * b}


def _binop(op: str, left: Expr, right: Expr, column: int) -> Expr:
    a, b = left.constant, right.constant
    if a is None or b is None:
        return BinOp(op, left, right)
    if op == "/":
        if b == 0:
            raise ExprError("division by zero", column)
        value = a / b
    else:
        value = _FOLD[op](a, b)
    if not math.isfinite(value):
        raise ExprError("the value is too large", column)
    return Const(value)


class _Parser:
    def __init__(self, text: str) -> None:
        self.text = text
        self.tokens: list[tuple[str, str, int]] = []  # (kind, text, column)
        pos = 0
        while pos < len(text):
            m = _TOKEN.match(text, pos)
            if m is None or m.end() == pos:
                if text[pos:].strip() == "":
                    break
                col = pos + 1 + (len(text[pos:]) - len(text[pos:].lstrip()))
                bad = text[col - 1]
                hint = " (variables are written $NAME)" if bad.isalpha() else ""
                raise ExprError(f"unexpected {bad!r}{hint}", col)
            kind = m.lastgroup
            self.tokens.append((kind, m.group(kind), m.start(kind) + (0 if kind == "var" else 1)))
            pos = m.end()
        self.i = 0
        self.depth = 0

    def peek(self) -> tuple[str, str, int] | None:
        return self.tokens[self.i] if self.i < len(self.tokens) else None

    def expr(self) -> Expr:
        left = self.term()
        while (tok := self.peek()) is not None and tok[1] in "+-" and tok[0] == "op":
            self.i += 1
            left = _binop(tok[1], left, self.term(), tok[2])
        return left

    def term(self) -> Expr:
        left = self.factor()
        while (tok := self.peek()) is not None and tok[1] in "*/" and tok[0] == "op":
            self.i += 1
            left = _binop(tok[1], left, self.factor(), tok[2])
        return left

    def factor(self) -> Expr:
        tok = self.peek()
        if tok is None:
            raise ExprError("unexpected end of expression", len(self.text) + 1)
        kind, text, col = tok
        self.i += 1
        if kind == "num":
            return Const(float(text))
        if kind == "var":
            return Var(text)
        if text in "+-":
            self._enter(col)
            operand = self.factor()
            self.depth -= 1
            if text == "+":
                return operand
            return Const(-operand.constant) if operand.constant is not None else Neg(operand)
        if text == "(":
            self._enter(col)
            inner = self.expr()
            self.depth -= 1
            close = self.peek()
            if close is None or close[1] != ")":
                raise ExprError("missing ')'", close[2] if close else len(self.text) + 1)
            self.i += 1
            return inner
        raise ExprError(f"unexpected {text!r}", col)

    def _enter(self, col: int) -> None:
        self.depth += 1
        if self.depth > MAX_DEPTH:
            raise ExprError(f"nested more than {MAX_DEPTH} deep", col)


def parse(text: str) -> Expr:
    """The tree of ``text``; raises :class:`ExprError`."""
    if len(text) > MAX_LENGTH:
        raise ExprError(f"longer than {MAX_LENGTH} characters", MAX_LENGTH + 1)
    if not text.strip():
        raise ExprError("empty expression", 1)
    p = _Parser(text)
    tree = p.expr()
    rest = p.peek()
    if rest is not None:
        raise ExprError(f"unexpected {('$' if rest[0] == 'var' else '') + rest[1]!r}", rest[2])
    return tree


def evaluate(expr: Expr, variables: Mapping) -> float:
    """``expr`` on an agent's ``variables`` (see :meth:`Expr.evaluate`)."""
    return expr.evaluate(variables.get)


__all__ = ["ALIASES", "BinOp", "Const", "EvalError", "Expr", "ExprError", "Neg", "Var", "evaluate", "number", "parse"]
