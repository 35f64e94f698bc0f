"""Strict reading of YAML nodes, collecting every problem with ``file:line``.

PyYAML resolves plain scalars the YAML 1.1 way: ``no``/``off``/``y`` become
booleans, ``0x1F``/``012`` integers, ``1e3``/``.nan`` floats.  Reading the
*node* tree (``yaml.compose``) instead of constructed Python objects keeps the
tag and the line of every value, so a value of the wrong YAML type is refused
with its position and a hint instead of being silently converted.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Collection
from decimal import Decimal
from typing import Any, Final, TypeVar

import yaml

T = TypeVar("T")

STR: Final = "tag:yaml.org,2002:str"
INT: Final = "tag:yaml.org,2002:int"
FLOAT: Final = "tag:yaml.org,2002:float"
BOOL: Final = "tag:yaml.org,2002:bool"
NULL: Final = "tag:yaml.org,2002:null"

_DECIMAL = re.compile(r"-?(0|[1-9][0-9]*)(\.[0-9]+)?")
_WHOLE = re.compile(r"-?(0|[1-9][0-9]*)")

Pairs = dict[str, tuple[yaml.Node, yaml.Node]]


def line(node: yaml.Node) -> int:
    """The 1-based line where *node* starts."""
    return int(node.start_mark.line) + 1


def describe(node: yaml.Node) -> str:
    """What YAML made of *node*, with the way to write a string instead."""
    if isinstance(node, yaml.SequenceNode):
        return "a list"
    if isinstance(node, yaml.MappingNode):
        return "a mapping"
    value = node.value
    if node.tag == INT and value.lower().startswith(("0x", "-0x", "+0x")):
        return f"{value} unquoted, which YAML reads as a hex number (quote it)"
    if node.tag == INT:
        return f"{value} unquoted, which YAML reads as a number (quote it)"
    if node.tag == FLOAT:
        return f"{value} unquoted, which YAML reads as a float (quote it)"
    if node.tag == BOOL:
        return f"{value} unquoted, which YAML 1.1 reads as a boolean (quote it)"
    if node.tag == NULL:
        return "an empty value"
    return f"a value tagged {node.tag}"


class Reader:
    """Reads nodes of one file; every problem lands in ``problems`` as ``file:line: msg``."""

    def __init__(self, filename: str, problems: list[str]) -> None:
        self.filename = filename
        self.problems = problems

    def error(self, node: yaml.Node | int, message: str) -> None:
        """Record a problem at *node* (or at a line number)."""
        at = node if isinstance(node, int) else line(node)
        self.problems.append(f"{self.filename}:{at}: {message}")

    def mapping(self, node: yaml.Node, what: str, allowed: Collection[str],
                required: Collection[str] = ()) -> Pairs | None:
        """The keys of a mapping node, refusing non-string, duplicate, unknown and missing keys."""
        if not isinstance(node, yaml.MappingNode):
            self.error(node, f"{what} must be a mapping, not {describe(node)}")
            return None
        pairs: Pairs = {}
        for key_node, value_node in node.value:
            if not isinstance(key_node, yaml.ScalarNode) or key_node.tag != STR:
                self.error(key_node, f"key in {what} must be a string, not {describe(key_node)}")
                continue
            key = key_node.value
            if key in pairs:
                first = line(pairs[key][0])
                self.error(key_node, f"duplicate key {key!r} in {what} (first at line {first})")
                continue
            if allowed and key not in allowed:
                self.error(key_node, f"unknown key {key!r} in {what} "
                                     f"(expected one of: {', '.join(allowed)})")
                continue
            pairs[key] = (key_node, value_node)
        for key in required:
            if key not in pairs:
                self.error(node, f"{what} is missing required key {key!r}")
        return pairs

    def string(self, node: yaml.Node, what: str) -> str | None:
        """A string scalar (quoted, or plain that YAML left a string)."""
        if isinstance(node, yaml.ScalarNode) and node.tag == STR:
            return str(node.value)
        self.error(node, f"{what} must be a string, not {describe(node)}")
        return None

    def choice(self, node: yaml.Node, what: str, options: Collection[str]) -> str | None:
        """A string out of a fixed set."""
        value = self.string(node, what)
        if value is not None and value not in options:
            self.error(node, f"{what} must be one of {', '.join(options)}, not {value!r}")
            return None
        return value

    def integer(self, node: yaml.Node, what: str, minimum: int) -> int | None:
        """A plain decimal integer (no hex, octal, underscores or sign games) >= *minimum*."""
        if not (isinstance(node, yaml.ScalarNode) and node.tag == INT):
            self.error(node, f"{what} must be a whole number, not {describe(node)}")
            return None
        if _WHOLE.fullmatch(node.value) is None:
            self.error(node, f"{what} must be written in plain decimal digits, not {node.value}")
            return None
        value = int(node.value)
        if value < minimum:
            self.error(node, f"{what} must be at least {minimum}, not {value}")
            return None
        return value

    def decimal(self, node: yaml.Node, what: str, positive: bool = False) -> Decimal | None:
        """A decimal written as a quoted string like ``"1000"`` or ``"0.5"`` (never a float)."""
        if not (isinstance(node, yaml.ScalarNode) and node.tag == STR):
            self.error(node, f"{what} must be a quoted decimal string like \"1000\", "
                             f"not {describe(node)}")
            return None
        text = node.value
        if _DECIMAL.fullmatch(text) is None:
            self.error(node, f"{what} must be a plain decimal like \"1000\" or \"0.5\", "
                             f"not {text!r}")
            return None
        value = Decimal(text)
        if value < 0 or (positive and value == 0):
            self.error(node, f"{what} must be {'positive' if positive else 'at least 0'}, "
                             f"not {text}")
            return None
        return value

    def sequence(self, node: yaml.Node, what: str, non_empty: bool = True) -> list[yaml.Node]:
        """The items of a sequence node (an empty list when it is not one)."""
        if not isinstance(node, yaml.SequenceNode):
            self.error(node, f"{what} must be a list, not {describe(node)}")
            return []
        if non_empty and not node.value:
            self.error(node, f"{what} must not be empty")
        return list(node.value)

    def strings(self, node: yaml.Node, what: str, single_ok: bool) -> list[tuple[yaml.Node, str]]:
        """A list of strings, or (when *single_ok*) one string standing for a list of one."""
        if single_ok and isinstance(node, yaml.ScalarNode) and node.tag == STR:
            return [(node, str(node.value))]
        out = []
        for item in self.sequence(node, what):
            value = self.string(item, f"entry of {what}")
            if value is not None:
                out.append((item, value))
        return out

    def each(self, pairs: Pairs, key: str, read: Callable[..., T], *args: Any,
             **kwargs: Any) -> T | None:
        """``read(value_node, *args, **kwargs)`` when *key* is present, else None."""
        if key not in pairs:
            return None
        return read(pairs[key][1], *args, **kwargs)
