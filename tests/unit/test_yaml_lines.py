"""YAML with line numbers: the data and the lines come from one parse, equal
keys are found, and syntax errors carry their line."""

from __future__ import annotations

import pytest

from tide.yaml_lines import DuplicateKey, YamlSyntaxError, parse_yaml

TEXT = """\
a:
  b: 1
  c:
    - x
    - {d: 2}
e: [1, 2]
"""


def test_data_is_what_safe_load_gives() -> None:
    doc = parse_yaml(TEXT)
    assert doc.data == {"a": {"b": 1, "c": ["x", {"d": 2}]}, "e": [1, 2]}
    empty = parse_yaml("")
    assert (empty.data, empty.root) == ({}, None)
    assert empty.line_of(["a"]) == 1


@pytest.mark.parametrize(
    ("path", "line"),
    [
        ([], 1),
        (["a"], 1),
        (["a", "b"], 2),
        (["a", "c", 1], 5),
        (["a", "c", 1, "d"], 5),
        (["a", "missing"], 1),  # the deepest key that exists
        (["a", "c", 7], 3),  # an index out of range stops at the list's key
        (["a", "b", "deeper"], 2),  # a scalar has no keys
        (["e", 1], 6),
    ],
)
def test_line_of_a_path(path: list[str | int], line: int) -> None:
    assert parse_yaml(TEXT).line_of(path) == line


def test_the_last_of_equal_keys_wins_and_each_repeat_is_listed() -> None:
    doc = parse_yaml("a: 1\nb:\n  c: 1\n  c: 2\na: 3\nl:\n  - {x: 1, x: 2}\n")
    assert doc.data["a"] == 3
    assert doc.line_of(["a"]) == 5
    assert doc.duplicate_keys() == [
        DuplicateKey(4, "b.c"),
        DuplicateKey(5, "a"),
        DuplicateKey(7, "l.0.x"),
    ]


def test_aliases_are_walked_once() -> None:
    doc = parse_yaml("base: &b {k: 1, k: 2}\nuse: *b\n")
    assert doc.duplicate_keys() == [DuplicateKey(1, "base.k")]


def test_a_syntax_error_has_its_line() -> None:
    with pytest.raises(YamlSyntaxError) as caught:
        parse_yaml("a: 1\nb: [\n")
    assert caught.value.line == 3
    assert str(caught.value).startswith("YAML syntax error: ")
