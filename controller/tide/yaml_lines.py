"""YAML that remembers where things are: one parse gives both the data and the
node tree, so a problem found in the data can be reported with its line.

PyYAML keeps the last of two equal keys silently, which hides a typo; the
duplicates are listed here so the caller can refuse them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import yaml


class YamlSyntaxError(Exception):
    """The text is not one valid YAML document.

    `line` is 1-based, or None when PyYAML gives no position; str() is the
    message, e.g. "YAML syntax error: ..."."""

    def __init__(self, line: int | None, message: str) -> None:
        self.line = line
        super().__init__(message)


class DuplicateKey(NamedTuple):
    line: int  # 1-based line of the repeated key
    path: str  # dotted path to it, e.g. "pool.collector"


@dataclass(frozen=True)
class YamlDocument:
    """A parsed document: `data` as yaml.safe_load gives it, `root` its node tree
    (None for an empty document, whose data is {})."""

    data: Any
    root: yaml.Node | None

    def line_of(self, path: Sequence[str | int]) -> int:
        """The 1-based line of the key `path` names, or of the deepest node on the way
        that exists (a missing key is reported at the mapping that lacks it)."""
        node = self.root
        if node is None:
            return 1
        line = node.start_mark.line + 1
        for part in path:
            if isinstance(node, yaml.MappingNode):
                found = [(k, v) for k, v in node.value if getattr(k, "value", None) == str(part)]
                if not found:
                    break
                key, node = found[-1]  # the last duplicate wins, as in the loaded data
                line = key.start_mark.line + 1
            elif isinstance(node, yaml.SequenceNode) and isinstance(part, int):
                if not 0 <= part < len(node.value):
                    break
                node = node.value[part]
                line = node.start_mark.line + 1
            else:
                break
        return line

    def duplicate_keys(self) -> list[DuplicateKey]:
        """Every key given twice in one mapping, in document order."""
        return _duplicates(self.root, (), set())


def parse_yaml(text: str) -> YamlDocument:
    """Parse one YAML document (safe tags only); raise YamlSyntaxError if it is invalid."""
    loader = yaml.SafeLoader(text)
    try:
        root = loader.get_single_node()
        data = loader.construct_document(root) if root is not None else {}
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark else 1
        raise YamlSyntaxError(line, f"YAML syntax error: {exc.problem or exc.context}") from exc
    except yaml.YAMLError as exc:
        raise YamlSyntaxError(None, f"YAML error: {exc}") from exc
    finally:
        loader.dispose()
    return YamlDocument(data=data, root=root)


def _duplicates(
    node: yaml.Node | None, loc: tuple[str, ...], seen_nodes: set[int]
) -> list[DuplicateKey]:
    found: list[DuplicateKey] = []
    if id(node) in seen_nodes:  # an alias: walked already (and maybe recursive)
        return found
    seen_nodes.add(id(node))
    if isinstance(node, yaml.MappingNode):
        seen: set[str] = set()
        for key, value in node.value:
            name = str(getattr(key, "value", "?"))
            if name in seen:
                found.append(DuplicateKey(key.start_mark.line + 1, ".".join((*loc, name))))
            seen.add(name)
            found += _duplicates(value, (*loc, name), seen_nodes)
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            found += _duplicates(item, (*loc, str(index)), seen_nodes)
    return found


__all__ = ["DuplicateKey", "YamlDocument", "YamlSyntaxError", "parse_yaml"]
