"""YAML files that remember where every value came from.

`load_yaml(path)` returns the data and a `Locator` that maps a key path
(`("listeners", 0, "port")`) to its line in the file; `validate(data, schema,
locator, path)` checks the data with a JSON schema and turns every violation
into one line `FILE:LINE: key.path: what is expected, got X`. All problems of
a file are collected and raised together as one `InputErrors` (an
`InputError` whose first line is a summary and whose `problems` list holds
each one), so a user fixes a file in one pass. Duplicate keys, which YAML
would silently resolve to the last one, are reported as errors too.

A schema node may carry `"x-expect": "a rate like 30/minute"`: that text is
then used as "what is expected" for any violation at that node. A `format`
is checked by the function `validate(..., formats=...)` registers for it
(the config's settings: `monitor.settings.FORMATS`); the ValueError it raises
is the problem.

Hostile files are bounded before anything is built: a document may nest at
most `MAX_DEPTH` levels and hold at most `MAX_NODES` values once its aliases
are expanded (seven levels of nine-fold aliases in 385 bytes would otherwise
cost minutes and gigabytes), each refusal naming the file and line.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import jsonschema
import yaml

from .errors import InputError

KeyPath = tuple[str | int, ...]

MAX_DEPTH = 64
MAX_NODES = 200_000


class InputErrors(InputError):
    """Several problems in one input; `problems` holds each as an InputError."""

    def __init__(self, problems: Sequence[InputError]):
        first = problems[0]
        more = f" (and {len(problems) - 1} more problem{'s' if len(problems) > 2 else ''})" if len(problems) > 1 else ""
        super().__init__(first.where, first.message + more)
        self.problems = list(problems)

    def lines(self) -> list[str]:
        return [str(p) for p in self.problems]


def format_path(key_path: Iterable[str | int]) -> str:
    """`("listeners", 0, "port")` -> `listeners[0].port`."""
    out = ""
    for part in key_path:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out or "(top level)"


class Locator:
    """Line numbers (1-based) of keys and values of a loaded YAML document."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._lines: dict[KeyPath, int] = {}
        self.problems: list[InputError] = []   # found while loading (duplicate keys); validate() reports them

    def record(self, key_path: KeyPath, line: int) -> None:
        self._lines.setdefault(key_path, line)

    def line(self, key_path: Sequence[str | int]) -> int:
        """The line of the value at key_path, or of its nearest recorded parent."""
        key = tuple(key_path)
        while key not in self._lines and key:
            key = key[:-1]
        return self._lines.get(key, 1)

    def where(self, key_path: Sequence[str | int]) -> str:
        return f"{self.path}:{self.line(key_path)}"

    def error(self, key_path: Sequence[str | int], message: str) -> InputError:
        return InputError(self.where(key_path), f"{format_path(key_path)}: {message}")


class FlagLocator(Locator):
    """For settings given as flags (`--set KEY=VALUE`): errors name the flag, not a line."""

    def where(self, key_path: Sequence[str | int]) -> str:
        return self.path


def _walk(node: yaml.Node, key_path: KeyPath, locator: Locator, problems: list[InputError]) -> None:
    locator.record(key_path, node.start_mark.line + 1)
    if isinstance(node, yaml.MappingNode):
        seen: dict[Any, int] = {}
        for key_node, value_node in node.value:
            key = key_node.value if isinstance(key_node, yaml.ScalarNode) else str(key_node.value)
            line = key_node.start_mark.line + 1
            if key in seen:
                problems.append(InputError(
                    f"{locator.path}:{line}",
                    f"{format_path(key_path + (key,))}: duplicate key (first at line {seen[key]}); keep only one",
                ))
                continue
            seen[key] = line
            locator.record(key_path + (key,), line)
            _walk(value_node, key_path + (key,), locator, problems)
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            _walk(item, key_path + (index,), locator, problems)


def load_yaml(path: str | Path) -> tuple[Any, Locator]:
    """Parse a YAML file; raises InputError naming the file and line of a syntax error.

    Duplicate keys (YAML would keep the last silently) are kept in `locator.problems` and
    reported by `validate`."""
    name = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise InputError(name, "no such file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(name, f"cannot read: {exc}") from None
    return parse_yaml(text, name)


def check_size(root: yaml.Node, name: str) -> None:
    """Refuse a document deeper than MAX_DEPTH or larger than MAX_NODES with its aliases expanded.

    Sizes are memoised per node, so an alias bomb is measured in time linear in
    the text, not in its expansion."""
    sizes: dict[int, int] = {}
    stack: list[tuple[yaml.Node, int, bool]] = [(root, 1, False)]
    while stack:
        node, depth, children_done = stack.pop()
        if depth > MAX_DEPTH:
            raise InputError(f"{name}:{node.start_mark.line + 1}", f"nested deeper than {MAX_DEPTH} levels")
        children = _children(node)
        if children_done or not children:
            sizes[id(node)] = 1 + sum(sizes[id(child)] for child in children)
            if sizes[id(node)] > MAX_NODES:
                raise InputError(f"{name}:{node.start_mark.line + 1}",
                                 f"more than {MAX_NODES:,} values once its aliases are expanded")
            continue
        stack.append((node, depth, True))
        stack.extend((child, depth + 1, False) for child in children if id(child) not in sizes)


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.MappingNode):
        return [part for pair in node.value for part in pair]
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    return []


def parse_yaml(text: str, name: str) -> tuple[Any, Locator]:
    """Like load_yaml, for text already read; `name` is used in messages."""
    locator = Locator(name)
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        if node is not None:
            check_size(node, name)
        data = loader.construct_document(node) if node is not None else None
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark else 1
        raise InputError(f"{name}:{line}", f"not valid YAML: {exc.problem or exc.context}") from None
    except yaml.YAMLError as exc:
        raise InputError(name, f"not valid YAML: {exc}") from None
    except RecursionError:
        raise InputError(f"{name}:{loader.get_mark().line + 1}",
                         f"nested deeper than the YAML parser can follow (the limit is {MAX_DEPTH} levels)") from None
    finally:
        loader.dispose()
    if node is not None:
        _walk(node, (), locator, locator.problems)
    return data, locator


_TYPE_NAMES = {
    "object": "a mapping", "array": "a list", "string": "a string", "integer": "an integer",
    "number": "a number", "boolean": "true or false", "null": "nothing",
}


def _describe(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _expected_type(expected: str | list[str]) -> str:
    names = [expected] if isinstance(expected, str) else expected
    return " or ".join(_TYPE_NAMES.get(n, n) for n in names)


def _chosen_branch(error: jsonschema.ValidationError) -> list[jsonschema.ValidationError]:
    """The problems inside the anyOf branch the value's type picked (a section's mapping rather than null)."""
    return [e for e in error.context if not (e.validator == "type" and not e.relative_path)]


def _messages(error: jsonschema.ValidationError) -> list[tuple[KeyPath, str]]:
    """(key path, message) pairs for one schema violation."""
    at = tuple(error.absolute_path)
    got = _describe(error.instance)
    expect = error.schema.get("x-expect") if isinstance(error.schema, dict) else None
    kind = error.validator
    if kind == "format" and error.cause is not None:
        return [(at, f"{error.cause}, got {got}")]
    if kind == "anyOf" and not expect:
        deeper = _chosen_branch(error)
        if deeper:
            return [message for e in deeper for message in _messages(e)]
        types = [e.validator_value for e in error.context if e.validator == "type"]
        return [(at, f"expected {' or '.join(_expected_type(t) for t in types)}, got {got}")]
    if kind == "required":
        missing = [k for k in error.validator_value if k not in error.instance]
        return [(at, f"missing required key {k!r}") for k in missing]
    if kind == "additionalProperties":
        known = sorted(error.schema.get("properties", {}))
        out = []
        for key in error.instance:
            if key in known:
                continue
            close = difflib.get_close_matches(str(key), known, n=1)
            hint = f"did you mean {close[0]!r}? " if close else ""
            out.append((at + (key,), f"unknown key: {hint}expected one of {', '.join(known)}"))
        return out
    if expect:
        return [(at, f"expected {expect}, got {got}")]
    if kind == "type":
        return [(at, f"expected {_expected_type(error.validator_value)}, got {got}")]
    if kind == "enum":
        return [(at, f"expected one of {', '.join(map(str, error.validator_value))}, got {got}")]
    if kind == "const":
        return [(at, f"expected {error.validator_value!r}, got {got}")]
    if kind in ("minimum", "exclusiveMinimum"):
        return [(at, f"expected a number {'>=' if kind == 'minimum' else '>'} {error.validator_value}, got {got}")]
    if kind in ("maximum", "exclusiveMaximum"):
        return [(at, f"expected a number {'<=' if kind == 'maximum' else '<'} {error.validator_value}, got {got}")]
    if kind == "minItems":
        return [(at, f"expected at least {error.validator_value} item(s), got {got}")]
    if kind == "uniqueItems":
        return [(at, f"expected no repeated items, got {got}")]
    if kind == "pattern":
        return [(at, f"expected text matching {error.validator_value}, got {got}")]
    if kind == "minLength":
        return [(at, f"expected a non-empty string, got {got}")]
    return [(at, f"{error.message}")]


def validate(data: Any, schema: dict, locator: Locator, path: str | Path | None = None,
             formats: jsonschema.FormatChecker | None = None) -> None:
    """Check data against a JSON schema; raises InputErrors listing every violation by file:line and key.

    `formats` checks the schema's `format` keywords (its functions raise ValueError saying what is wrong)."""
    if path is not None:
        locator.path = str(path)
    validator = jsonschema.Draft202012Validator(schema, format_checker=formats)
    problems: list[tuple[int, InputError]] = [(int(p.where.rsplit(":", 1)[1]), p) for p in locator.problems]
    for error in validator.iter_errors(data):
        for key_path, message in _messages(error):
            problem = locator.error(key_path, message)
            problems.append((locator.line(key_path), problem))
    if problems:
        problems.sort(key=lambda item: item[0])
        unique = list(dict.fromkeys(str(p) for _, p in problems))
        by_text = {str(p): p for _, p in problems}
        raise InputErrors([by_text[text] for text in unique])
