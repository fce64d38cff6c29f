"""`-k EXPR` selection: pytest-style keyword expressions over check ids.

Grammar: expr := term ('or' term)*; term := factor ('and' factor)*;
factor := 'not' factor | '(' expr ')' | WORD. A WORD matches when it is a
case-insensitive substring of the check id.
"""

from __future__ import annotations

import re
from collections.abc import Callable

from specgrad.errors import UsageError

Matcher = Callable[[str], bool]
Parser = Callable[[list[str], int, str], tuple[Matcher, int]]
_TOKENS = re.compile(r"\s*(\(|\)|[^\s()]+)")


def compile_expression(expr: str) -> Matcher:
    tokens = _TOKENS.findall(expr)
    if not tokens:
        raise UsageError("-k: empty expression")
    matcher, pos = _parse_or(tokens, 0, expr)
    if pos != len(tokens):
        raise UsageError(f"-k {expr!r}: unexpected {tokens[pos]!r}")
    return matcher


def _binary(
    tokens: list[str],
    pos: int,
    expr: str,
    word: str,
    operand: Parser,
    combine: Callable[[Matcher, Matcher], Matcher],
) -> tuple[Matcher, int]:
    left, pos = operand(tokens, pos, expr)
    while pos < len(tokens) and tokens[pos] == word:
        right, pos = operand(tokens, pos + 1, expr)
        left = combine(left, right)
    return left, pos


def _parse_or(tokens: list[str], pos: int, expr: str) -> tuple[Matcher, int]:
    return _binary(tokens, pos, expr, "or", _parse_and, lambda a, b: lambda s: a(s) or b(s))


def _parse_and(tokens: list[str], pos: int, expr: str) -> tuple[Matcher, int]:
    return _binary(tokens, pos, expr, "and", _parse_not, lambda a, b: lambda s: a(s) and b(s))


def _parse_not(tokens: list[str], pos: int, expr: str) -> tuple[Matcher, int]:
    if pos >= len(tokens):
        raise UsageError(f"-k {expr!r}: expression ends too early")
    token = tokens[pos]
    if token == "not":
        inner, pos = _parse_not(tokens, pos + 1, expr)
        return (lambda s: not inner(s)), pos
    if token == "(":
        inner, pos = _parse_or(tokens, pos + 1, expr)
        if pos >= len(tokens) or tokens[pos] != ")":
            raise UsageError(f"-k {expr!r}: missing ')'")
        return inner, pos + 1
    if token in (")", "and", "or"):
        raise UsageError(f"-k {expr!r}: unexpected {token!r}")
    word = token.lower()
    return (lambda s: word in s.lower()), pos + 1
