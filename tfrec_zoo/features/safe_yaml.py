"""A YAML loader for hand-written config files that may be hostile: `load(text)` is `yaml.safe_load` plus limits.

* nesting deeper than `MAX_DEPTH` is refused (PyYAML's composer recurses once per level: 20,000 nested `[` end in a
  RecursionError otherwise);
* aliases may add at most `MAX_ALIAS_VALUES` values to the document (a 2 KB "billion laughs" file expands to 10^9
  values; the count is kept while composing, so such a file is refused before anything is expanded), and an alias
  may not point into its own anchor (a recursive structure);
* a key that appears twice in one mapping is refused, naming both lines (plain PyYAML keeps the last silently).

Every refusal raises `LimitError`, a `yaml.MarkedYAMLError` whose `problem_mark` is where it happened and whose
`fix` says what to do. The checks sit in the composer and constructor (PyYAML's Python code) under either parser:
`CLoader` (libyaml, when PyYAML was built with it; about 3x faster on large files) or `PyLoader`.
"""
from __future__ import annotations

from typing import Any

import yaml
from yaml.composer import Composer
from yaml.constructor import SafeConstructor
from yaml.events import AliasEvent
from yaml.nodes import MappingNode, Node
from yaml.parser import Parser
from yaml.reader import Reader
from yaml.resolver import Resolver
from yaml.scanner import Scanner

try:
    from yaml._yaml import CParser as _CParser
except ImportError:  # PyYAML without libyaml: PyLoader gives the same results, slower
    _CParser = None

MAX_DEPTH = 20
MAX_ALIAS_VALUES = 10_000
_MERGE_TAG = "tag:yaml.org,2002:merge"


class LimitError(yaml.MarkedYAMLError):
    """The document breaks one of this loader's limits (depth, aliases, duplicate keys)."""

    def __init__(self, problem: str, mark: Any, fix: str):
        super().__init__(problem=problem, problem_mark=mark)
        self.fix = fix


class _Checks(Composer, SafeConstructor, Resolver):
    """The composer and constructor of `yaml.SafeLoader` with the limits above; a parser class supplies events."""

    def _init_checks(self) -> None:
        Composer.__init__(self)
        SafeConstructor.__init__(self)
        Resolver.__init__(self)
        self._depth = 0
        self._values = 0            # values composed so far, counting what each alias stands for
        self._alias_values = 0      # of which added by aliases
        self._anchor_values: dict[str, int | None] = {}   # anchor -> values under it; None while it is composed

    def compose_node(self, parent: Node | None, index: Any) -> Node:
        event = self.peek_event()
        if self.check_event(AliasEvent):
            size = self._anchor_values.get(event.anchor, 0)
            if size is None:
                raise LimitError(f"alias *{event.anchor} refers to its own anchor (a recursive structure)",
                                 event.start_mark, "write the value out instead of aliasing its own anchor")
            self._values += size
            self._alias_values += size
            if self._alias_values > MAX_ALIAS_VALUES:
                raise LimitError(f"aliases expand to more than {MAX_ALIAS_VALUES} values (an alias bomb?)",
                                 event.start_mark, "write the values out or use fewer aliases")
            return super().compose_node(parent, index)   # undefined aliases are reported there
        if self._depth >= MAX_DEPTH:
            raise LimitError(f"nested deeper than {MAX_DEPTH} levels", event.start_mark,
                             "a feature spec needs about 6 levels; flatten the structure")
        anchor = event.anchor
        if anchor is not None and anchor not in self._anchor_values:
            self._anchor_values[anchor] = None
        start = self._values
        self._values += 1
        self._depth += 1
        try:
            node = super().compose_node(parent, index)
        finally:
            self._depth -= 1
        if anchor is not None:
            self._anchor_values[anchor] = self._values - start
        return node

    def construct_mapping(self, node: Node, deep: bool = False) -> dict:
        if isinstance(node, MappingNode):
            seen: dict[Any, Any] = {}
            for key_node, _ in node.value:
                if key_node.tag == _MERGE_TAG:  # `<<: *base` merges; the keys it brings may be overridden
                    continue
                key = self.construct_object(key_node, deep=True)
                try:
                    first = seen.setdefault(key, key_node.start_mark)
                except TypeError:  # an unhashable key: the base class reports it
                    continue
                if first is not key_node.start_mark:
                    again = key_node.start_mark
                    raise LimitError(f"duplicate key {key!r} (first at line {first.line + 1} column {first.column + 1}, "
                                     f"again at line {again.line + 1} column {again.column + 1})", again,
                                     "keep one of them (YAML would silently keep the last)")
        return super().construct_mapping(node, deep=deep)


class PyLoader(Reader, Scanner, Parser, _Checks):
    """PyYAML's pure-Python parser under the checks."""

    def __init__(self, stream: str):
        Reader.__init__(self, stream)
        Scanner.__init__(self)
        Parser.__init__(self)
        self._init_checks()


if _CParser is not None:
    class CLoader(_CParser, _Checks):
        """libyaml's parser under the checks (about 3x faster than PyLoader on a large spec)."""

        def __init__(self, stream: str):
            _CParser.__init__(self, stream)
            self._init_checks()

        # CParser composes whole documents in C; route composition through the checked Python composer instead
        check_node = Composer.check_node
        get_node = Composer.get_node
        get_single_node = Composer.get_single_node
        compose_document = Composer.compose_document

    LOADERS: tuple[type, ...] = (CLoader, PyLoader)
else:
    LOADERS = (PyLoader,)


def load(text: str, loader_class: type | None = None) -> Any:
    """Parse one YAML document like `yaml.safe_load`, within the limits above (raises `yaml.YAMLError`);
    `loader_class` is one of LOADERS (default: the fastest)."""
    loader = (loader_class or LOADERS[0])(text)
    try:
        return loader.get_single_data()
    finally:
        loader.dispose()
