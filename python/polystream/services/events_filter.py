"""Event type patterns: dot-separated segments, `*` = exactly one segment,
`**` = zero or more segments, anything else literal (docs/contract.md)."""

from __future__ import annotations

from functools import lru_cache
from typing import Sequence


class PatternError(ValueError):
    """A pattern that can never be valid; the message is the contract's text."""


def validate_pattern(pattern: str) -> tuple[str, ...]:
    # "" is one empty segment, so it gets the same message (as in Go).
    segments = tuple(pattern.split("."))
    if any(segment == "" for segment in segments):
        raise PatternError(f'invalid event type pattern "{pattern}": empty segment')
    return segments


@lru_cache(maxsize=4096)
def _match(pattern: tuple[str, ...], name: tuple[str, ...]) -> bool:
    if not pattern:
        return not name
    head, rest = pattern[0], pattern[1:]
    if head == "**":
        # Zero segments, or consume one and keep `**` in place.
        return _match(rest, name) or (bool(name) and _match(pattern, name[1:]))
    if not name:
        return False
    return (head == "*" or head == name[0]) and _match(rest, name[1:])


class TypeFilter:
    """An immutable set of patterns; empty matches every type."""

    __slots__ = ("patterns", "_compiled")

    def __init__(self, patterns: Sequence[str]) -> None:
        self.patterns = tuple(patterns)
        self._compiled = tuple(validate_pattern(p) for p in self.patterns)

    def matches(self, event_type: str) -> bool:
        if not self._compiled:
            return True
        name = tuple(event_type.split("."))
        return any(_match(pattern, name) for pattern in self._compiled)
