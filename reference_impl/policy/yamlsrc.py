"""YAML reading that remembers where every value came from (file, line), for error messages.

PyYAML's composer gives nodes with marks; we build plain Python values from them and a map
from each value's path (``("policy", "rules", 3, "filter_action")``) to its line. Duplicate
mapping keys are an error (PyYAML would silently keep the last one).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import yaml
from yaml.constructor import SafeConstructor
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

Path = tuple[str | int, ...]

# libyaml's composer when PyYAML was built with it (15x faster); the nodes are the same.
_Loader: type = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


@dataclass
class SourceMap:
    """Line numbers (1-based) of the values of one YAML document, by path."""

    file: str
    lines: dict[Path, int] = field(default_factory=dict)

    def line_of(self, path: Path) -> int:
        """The line of ``path`` or of its nearest ancestor that exists in the file."""
        p = tuple(path)
        while p:
            if p in self.lines:
                return self.lines[p]
            p = p[:-1]
        return self.lines.get((), 1)


class YamlSourceError(Exception):
    """The text is not a YAML document we can read (syntax, duplicate key, ...)."""

    def __init__(self, file: str, line: int, message: str) -> None:
        super().__init__(f"{file}:{line}: {message}")
        self.file = file
        self.line = line
        self.message = message


def load_yaml(text: str, file: str = "<policy>") -> tuple[Any, SourceMap]:
    """Parse one YAML document; returns the value and its source map."""
    try:
        node = yaml.compose(text, Loader=_Loader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark is not None else 1
        raise YamlSourceError(file, line, f"YAML syntax error: {exc.problem or exc}") from None
    except yaml.YAMLError as exc:
        raise YamlSourceError(file, 1, f"YAML error: {exc}") from None
    smap = SourceMap(file)
    if node is None:
        return None, smap
    constructor = SafeConstructor()
    value = _build(node, (), smap, constructor, 0)
    return value, smap


_MAX_DEPTH = 64


def _build(node: Node, path: Path, smap: SourceMap, c: SafeConstructor, depth: int) -> Any:
    if depth > _MAX_DEPTH:
        raise YamlSourceError(smap.file, node.start_mark.line + 1, "YAML nested too deeply")
    smap.lines.setdefault(path, node.start_mark.line + 1)
    if isinstance(node, ScalarNode):
        try:
            return c.construct_object(node, deep=True)
        except yaml.YAMLError as exc:
            raise YamlSourceError(smap.file, node.start_mark.line + 1, str(exc)) from None
    if isinstance(node, SequenceNode):
        return [_build(item, (*path, i), smap, c, depth + 1) for i, item in enumerate(node.value)]
    if isinstance(node, MappingNode):
        try:
            c.flatten_mapping(node)  # YAML merge keys ("<<")
        except yaml.YAMLError as exc:
            raise YamlSourceError(smap.file, node.start_mark.line + 1, str(exc)) from None
        out: dict[Any, Any] = {}
        for key_node, value_node in node.value:
            key = _build(key_node, (*path, "<key>"), smap, c, depth + 1)
            if isinstance(key, list | dict):
                raise YamlSourceError(
                    smap.file, key_node.start_mark.line + 1, "a mapping key must be a scalar"
                )
            if key in out:
                raise YamlSourceError(
                    smap.file,
                    key_node.start_mark.line + 1,
                    f"duplicate key {key!r} (first on line {smap.lines.get((*path, key), '?')});"
                    " keep only one",
                )
            smap.lines[(*path, key)] = key_node.start_mark.line + 1
            out[key] = _build(value_node, (*path, key), smap, c, depth + 1)
        smap.lines.pop((*path, "<key>"), None)
        return out
    raise YamlSourceError(smap.file, node.start_mark.line + 1, "unsupported YAML node")
