"""The one strict reader of every YAML file the toolkit reads: presets, configs, variants, experiment
and sweep specs.

Two steps, each in one place:

- `read_yaml` composes the YAML itself (PyYAML's node marks), so every key and value keeps its line,
  and refuses duplicate keys. Numbers follow YAML 1.2 (`1e-3` is a float, not PyYAML's string).
- `validate` checks the plain data against a pydantic model in strict mode: no "3" for 3, no `true`
  for 1, no unknown key. The first problem becomes one line, `FILE:LINE: key = value: expected ...`,
  with a "did you mean" for a misspelt key. `check_value` does the same for one config value against
  its dataclass field (config layers come from several files and --set, each with its own location).

YAML aliases (`*name`) repeat a node without copying it, so ten lines of nested aliases describe 10**9
values ("billion laughs"). PyYAML's composer keeps them shared; expanding them into plain data is where
the memory goes. Both readers count every node an alias repeats and refuse a document past
`ALIAS_BUDGET` repeated nodes (docs/security.md), before the expansion can grow.

What types cannot say (a known model, distinct seeds, heads dividing d) stays with its file's code
and is reported through `Doc.error` at the same lines.
"""

from __future__ import annotations

import functools
import re
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, TypeAdapter, ValidationError

from affectus.errors import AffectusError

Loc = tuple[Any, ...]  # a location inside a document: ("runs", 1, "model")
# Nodes that aliases may repeat in one document: far above what anchors in a config or spec use (a
# shared block of settings reused a few times), far below what takes memory (10**4 small nodes).
ALIAS_BUDGET = 10_000
M = TypeVar("M", bound=BaseModel)


class Strict(BaseModel):
    """Base of every file schema: strict types (no "3" for 3, no true for 1), unknown keys refused."""

    model_config = ConfigDict(extra="forbid", strict=True)


@dataclass
class Doc:
    """A YAML document as plain Python, with the 1-based line of every key and value."""

    data: Any
    source: str  # the file, or a name such as "<spec>" for data given as a dict
    lines: dict[Loc, int] = field(default_factory=dict, repr=False)

    def line(self, loc: Loc = ()) -> int | None:
        """The line of the nearest located node on `loc` (None where nothing is located)."""
        loc = tuple(loc)
        while loc not in self.lines and loc:
            loc = loc[:-1]
        return self.lines.get(loc)

    def where(self, loc: Loc = ()) -> str:
        """`SOURCE:LINE` of the nearest located node on `loc` (just SOURCE where nothing is located)."""
        line = self.line(loc)
        return self.source if line is None else f"{self.source}:{line}"

    def error(self, loc: Loc, message: str) -> AffectusError:
        return AffectusError(f"{self.where(loc)}: {message}")


# ------------------------------------------------------------------------------------------ reading


class _Loader(yaml.SafeLoader):
    """SafeLoader with YAML 1.2 floats: `1e-3` and `5E4` are numbers (YAML 1.1 wants a dot)."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)


def read_yaml(source: str | Path, text: str | None = None) -> Doc:
    """Read a YAML file (or `text` under the name `source`) with the line of every node."""
    source = str(source)
    if text is None:
        try:
            text = Path(source).read_text(encoding="utf-8")
        except UnicodeDecodeError:
            raise AffectusError(f"{source}: not UTF-8 text") from None
        except OSError as err:
            raise AffectusError(f"{source}: cannot read ({err.strerror or type(err).__name__})") from None
    try:
        node = yaml.compose(text, Loader=_Loader)
    except yaml.MarkedYAMLError as err:
        mark = err.problem_mark or err.context_mark
        line = mark.line + 1 if mark is not None else 1
        raise AffectusError(f"{source}:{line}: not valid YAML ({err.problem})") from None
    except yaml.YAMLError as err:
        raise AffectusError(f"{source}: not valid YAML ({' '.join(str(err).split())})") from None
    doc = Doc(None, source, {})
    if node is not None:
        try:
            doc.data = _plain(node, (), doc, _Loader(""), _Aliases(source))
        except yaml.MarkedYAMLError as err:  # e.g. a tag SafeLoader has no constructor for (!!python/name)
            mark = err.problem_mark or err.context_mark
            line = mark.line + 1 if mark is not None else 1
            raise AffectusError(f"{source}:{line}: {_yaml_problem(err)}") from None
        except (yaml.YAMLError, ValueError, TypeError, RecursionError) as err:
            raise AffectusError(f"{source}: not valid YAML ({' '.join(str(err).split()) or type(err).__name__})") from None
    return doc


def yaml_value(text: str, where: str = "--set") -> Any:
    """A value typed on the command line (`--set key=VALUE`), read as the same YAML as the files.

    The same rules as a file: aliases within the budget, no tags SafeLoader lacks (`!!python/name`);
    any problem is one AffectusError naming `where`."""
    if not text.strip():
        return ""
    return read_yaml(where, text).data


class _Aliases:
    """Counts the nodes that aliases repeat while a document is expanded (see ALIAS_BUDGET)."""

    def __init__(self, source: str) -> None:
        self.source, self.seen, self.repeated = source, set(), 0

    def visit(self, node: yaml.Node) -> None:
        if id(node) not in self.seen:
            self.seen.add(id(node))
            return
        # every node of a repeated subtree was seen before, so each one counts here
        self.repeated += 1
        if self.repeated > ALIAS_BUDGET:
            raise AffectusError(f"{self.source}: YAML aliases repeat more than "
                                f"{ALIAS_BUDGET} nodes; write the values out instead of nesting aliases")


def _yaml_problem(err: yaml.MarkedYAMLError) -> str:
    problem = " ".join(str(err.problem or err.context or "not valid YAML").split())
    return f"not valid YAML ({problem})"


_COLLECTION_TAGS = ("tag:yaml.org,2002:map", "tag:yaml.org,2002:seq")


def _plain(node: yaml.Node, loc: Loc, doc: Doc, loader: yaml.SafeLoader, aliases: _Aliases) -> Any:
    """A composed node -> plain Python, recording each node's line under its location."""
    aliases.visit(node)
    doc.lines.setdefault(loc, node.start_mark.line + 1)
    if isinstance(node, yaml.CollectionNode) and node.tag not in _COLLECTION_TAGS:
        # a scalar's tag goes through SafeLoader below; a collection's would be dropped silently
        raise AffectusError(f"{doc.source}:{node.start_mark.line + 1}: not valid YAML (tag {node.tag!r} "
                            "is not allowed: plain mappings and lists only)")
    if isinstance(node, yaml.MappingNode):
        out: dict[Any, Any] = {}
        for key_node, value_node in node.value:
            line = key_node.start_mark.line + 1
            if not isinstance(key_node, yaml.ScalarNode):
                raise AffectusError(f"{doc.source}:{line}: a key must be a plain value")
            aliases.visit(key_node)
            key = loader.construct_object(key_node, deep=True)
            if key in out:
                raise AffectusError(f"{doc.source}:{line}: duplicate key '{key}'")
            # a key's line (not its value's) is where an unknown key or a wrong value is reported
            doc.lines[loc + (key,)] = line
            out[key] = _plain(value_node, loc + (key,), doc, loader, aliases)
        return out
    if isinstance(node, yaml.SequenceNode):
        return [_plain(item, loc + (i,), doc, loader, aliases) for i, item in enumerate(node.value)]
    return loader.construct_object(node, deep=True)


# --------------------------------------------------------------------------------------- validation


def validate(schema: type[M], doc: Doc, loc: Loc = (), what: str = "the file") -> M:
    """The data at `loc` as a `schema` instance, or one AffectusError at the line of the first problem.

    `what` names the mapping at `loc` in an unknown-key message ("the spec", "preset sims")."""
    data = _at(doc.data, loc)
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise doc.error(loc, f"expected a mapping of {what}'s keys, got {_show(data)}")
    try:
        return schema.model_validate(data)
    except ValidationError as err:
        at, message = _problem(schema, data, err.errors(), what, lambda at: doc.line(loc + at) or 0)
        raise doc.error(loc + at, message) from None


def check_value(owner: type, name: str, value: Any, key: str) -> Any:
    """`value` checked (strictly) against the type of `owner`'s field `name`; `key` names it in errors.

    Numbers are widened where the field is a float (3 -> 3.0); a list stands for a tuple."""
    adapter = _field_adapter(owner, name)
    if adapter is None:
        return value
    try:
        return adapter.validate_python(value)
    except ValidationError as err:
        errors = [{**e, "loc": (key, *e["loc"])} for e in err.errors()]
        raise AffectusError(_problem(None, {key: value}, errors, key)[1]) from None


@functools.cache
def _field_adapter(owner: type, name: str) -> TypeAdapter | None:
    try:
        hint = typing.get_type_hints(owner)[name]
    except (NameError, KeyError, TypeError):
        return None  # an annotation we cannot resolve is not checked here (the model's validate may)
    if hint is Any:
        return None
    return TypeAdapter(_lists_for_tuples(hint), config=ConfigDict(strict=True))


def _lists_for_tuples(hint: Any) -> Any:
    """YAML has no tuples: accept a list where a field is annotated as a tuple."""
    origin = typing.get_origin(hint)
    if origin is tuple:
        from pydantic import BeforeValidator

        return typing.Annotated[hint, BeforeValidator(lambda v: tuple(v) if isinstance(v, list) else v)]
    return hint


def _at(data: Any, loc: Loc) -> Any:
    for part in loc:
        data = data.get(part) if isinstance(data, dict) else data[part] if isinstance(data, list) else None
    return data


def _real_loc(err: Any, data: Any) -> tuple[Loc, Loc | None]:
    """pydantic's error location without its union-member tags (`('seeds', 'int')` -> `('seeds',)`),
    and the location of the first union it went through (None if none)."""
    loc, out, union = err["loc"], [], None
    if err["type"] == "missing":  # the last part is the absent key itself
        inner, union = _real_loc({"type": "", "loc": loc[:-1]}, data)
        return inner + (loc[-1],), union
    for part in loc:
        in_list = isinstance(data, list) and isinstance(part, int) and 0 <= part < len(data)
        if not (in_list or isinstance(data, dict) and part in data):
            union = tuple(out) if union is None else union  # a tag naming the union member pydantic tried
            continue
        data = data[part]
        out.append(part)
    return tuple(out), union


_EXPECTED = {
    "int_type": "an integer", "int_parsing": "an integer", "int_from_float": "an integer",
    "float_type": "a number", "float_parsing": "a number", "finite_number": "a finite number",
    "bool_type": "true or false", "bool_parsing": "true or false",
    "string_type": "a string", "dict_type": "a mapping", "model_type": "a mapping", "model_attributes_type": "a mapping",
    "list_type": "a list", "tuple_type": "a list", "none_required": "null",
}


def _expected(err: Any) -> str:
    kind = err["type"]
    if kind in _EXPECTED:
        return _EXPECTED[kind]
    if kind == "literal_error":
        return str(err["ctx"]["expected"])
    if kind == "value_error":
        return str(err["ctx"]["error"])
    return re.sub(r"^\w+ should (be |have )?", "", err["msg"])


def _problem(schema: type[BaseModel] | None, data: Any, errors: list[Any], what: str,
             line: Callable[[Loc], int] = lambda loc: 0) -> tuple[Loc, str]:
    """The location and one-line message of the first problem in the file (a missing key last: a
    misspelt key explains it better). Of the errors one union
    gives, the member that got furthest speaks (a list of seeds with a bad item is not 'an integer')."""
    located = [(*_real_loc(e, data), e) for e in errors]
    deepest: dict[Loc, int] = {}
    for loc, union, _ in located:
        if union is not None:
            deepest[union] = max(deepest.get(union, 0), len(loc))
    located = [(loc, e) for loc, union, e in located if union is None or len(loc) == deepest[union]]
    loc, first = min(located, key=lambda pair: (pair[1]["type"] == "missing", line(pair[0]), -len(pair[0])))
    if first["type"] == "extra_forbidden":
        from affectus.errors import suggest

        allowed = _keys_at(schema, loc[:-1])
        inside = _dotted(loc[:-1]) or what
        return loc, (f"unknown key '{loc[-1]}' in {inside}: expected one of {', '.join(allowed)}"
                     f"{suggest(loc[-1], allowed)}")
    if first["type"] == "missing":
        return loc[:-1], f"missing key '{_dotted(loc)}'"
    same = [e for at, e in located if at == loc and e["type"] not in ("extra_forbidden", "missing")]
    expected = " or ".join(dict.fromkeys(_expected(e) for e in same))
    return loc, f"{_dotted(loc)} = {_show(_at(data, loc))}: expected {expected}"


def _dotted(loc: Loc) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _show(value: Any) -> str:
    if value is None or isinstance(value, bool):
        return {None: "null", True: "true", False: "false"}[value]
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _members(hint: Any) -> list[Any]:
    """A type annotation's alternatives: X | Y -> [X, Y]; Annotated[X, ...] -> [X]."""
    origin = typing.get_origin(hint)
    if origin is typing.Annotated:
        return _members(typing.get_args(hint)[0])
    if origin in (typing.Union, types.UnionType):
        return [m for arg in typing.get_args(hint) for m in _members(arg)]
    return [hint]


def _keys_at(schema: Any, loc: Loc) -> list[str]:
    """The keys a schema allows at a location (for an unknown-key message)."""
    hints = [schema]
    for part in loc:
        step: list[Any] = []
        for hint in (m for h in hints for m in _members(h)):
            if isinstance(hint, type) and issubclass(hint, BaseModel):
                names = {f.alias or n: f.annotation for n, f in hint.model_fields.items()}
                if part in names:
                    step.append(names[part])
            elif typing.get_origin(hint) is dict:
                step.append(typing.get_args(hint)[1])
            elif typing.get_origin(hint) in (list, tuple):
                step.append(typing.get_args(hint)[0])
        hints = step
    for hint in (m for h in hints for m in _members(h)):
        if isinstance(hint, type) and issubclass(hint, BaseModel):
            return [f.alias or n for n, f in hint.model_fields.items()]
    return []
