"""Load a protocol file without trusting it.

A protocol decides which voltages reach a physical array, so the loader treats the file as
hostile input:

* the file is size-checked before it is read and must be UTF-8;
* YAML is only *composed* (parsed into nodes) with PyYAML's ``SafeLoader`` machinery; the
  Python values are then built from the node graph here, so no YAML constructor ever runs.
  Explicit tags other than the plain core-schema ones (``!!str``, ``!!int``, ``!!float``,
  ``!!bool``, ``!!null``, ``!!seq``, ``!!map``) are refused while composing;
* implicit typing follows the YAML 1.2 core schema: ``1e-6`` is a number (YAML 1.1 would
  make it a string), ``no``/``off`` and dates stay strings;
* anchors and aliases are allowed, but the expanded document is bounded in node count and
  nesting depth (the "billion laughs" attack), and self-referencing aliases are refused;
* duplicate keys are errors, not "last one wins";
* the result is validated by :class:`hil.protocol.Protocol`, the files of ``file``
  patterns are opened once to check that they exist and fit the array, and the files of a
  calibrate step's ``source`` are read in full and checked.

Every failure is a :class:`ProtocolError` pointing at the file, line and field to fix.
"""

from __future__ import annotations

import difflib
import hashlib
import os
import re
import stat
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import yaml
from pydantic import BaseModel, ValidationError

from drivers.limits import SafetyLimits
from hil.protocol import FilePattern, Protocol, limit_violations

__all__ = ["LoadedProtocol", "ProtocolError", "check_within", "load_protocol", "step_error",
           "MAX_FILE_BYTES", "MAX_EXPANDED_NODES", "MAX_DEPTH"]

MAX_FILE_BYTES = 1 << 20
MAX_EXPANDED_NODES = 100_000
MAX_DEPTH = 64

_CORE = "tag:yaml.org,2002:"
_STR, _INT, _FLOAT, _BOOL, _NULL = (_CORE + t for t in ("str", "int", "float", "bool", "null"))
_SEQ, _MAP, _MERGE = _CORE + "seq", _CORE + "map", _CORE + "merge"
_ALLOWED_TAGS = {
    yaml.ScalarEvent: {_STR, _INT, _FLOAT, _BOOL, _NULL},
    yaml.SequenceStartEvent: {_SEQ},
    yaml.MappingStartEvent: {_MAP},
}
_KIND_NAME = {yaml.ScalarEvent: "a scalar", yaml.SequenceStartEvent: "a sequence",
              yaml.MappingStartEvent: "a mapping"}


class ProtocolError(Exception):
    """A protocol file that cannot be used, with where and why.

    ``str()`` is one line, ``"{path}:{line}: {field}: {message}"``; the line part is left out
    when unknown and the field part when the problem is not about one field. When validation
    finds several problems, this error describes the first one in the file and ``problems``
    holds all of them (each a ProtocolError).
    """

    def __init__(self, path: str | os.PathLike, line: int | None, field: str | None, message: str):
        super().__init__(path, line, field, message)
        self.path = path
        self.line = line
        self.field = field
        self.message = message
        self.problems: tuple[ProtocolError, ...] = (self,)

    def __str__(self) -> str:
        where = f"{os.fspath(self.path)}:{self.line}" if self.line is not None else os.fspath(self.path)
        parts = [where] + ([self.field] if self.field else []) + [self.message]
        return _one_line(": ".join(parts))


@dataclass(frozen=True)
class LoadedProtocol:
    """A validated protocol and the exact file it came from."""

    protocol: Protocol
    path: Path      # absolute
    text: str       # the file's text, unchanged
    sha256: str     # hex digest of the file's bytes

    @property
    def base_dir(self) -> Path:
        """Where relative paths in the protocol (``file`` patterns) are resolved."""
        return self.path.parent


def load_protocol(path: str | os.PathLike) -> LoadedProtocol:
    """Read, parse and validate the protocol at ``path``; raise :class:`ProtocolError` if it is unusable."""
    file = Path(path)
    try:
        return _load(file)
    except _Problem as problem:
        raise problem.to_error(path) from None
    except Exception as exc:  # noqa: BLE001 - the contract is that bad input only ever yields ProtocolError
        raise ProtocolError(path, None, None,
                            f"unexpected {type(exc).__name__} while loading: {exc}") from exc


def load_protocol_text(text: str, path: str | os.PathLike) -> LoadedProtocol:
    """Validate protocol ``text`` (e.g. the one stored with a run) as if it were the file at ``path``,
    which need not exist any more: only its directory is used, for the protocol's relative paths."""
    try:
        return _parse(text.encode("utf-8"), Path(path))
    except _Problem as problem:
        raise problem.to_error(path) from None
    except Exception as exc:  # noqa: BLE001 - the contract is that bad input only ever yields ProtocolError
        raise ProtocolError(path, None, None,
                            f"unexpected {type(exc).__name__} while loading: {exc}") from exc


def step_error(loaded: LoadedProtocol, index: int, message: str) -> ProtocolError:
    """A :class:`ProtocolError` about step ``index`` as a whole, at the line where the step starts."""
    root = _compose(loaded.text)
    builder = _Builder()
    builder.build(root, 0)
    where, node, _ = _locate(("steps", index), builder, root)
    return ProtocolError(loaded.path, _line(node), where, message)


def check_within(loaded: LoadedProtocol, limits: SafetyLimits, whose: str) -> None:
    """Raise :class:`ProtocolError` (file, line, field) if a step asks for more than ``limits``, the
    envelope of the backend that will run it as far as it is known before the instrument opens (the
    mock's converters, a board's fixed ratings). ``whose`` names them in the message."""
    root = _compose(loaded.text)
    builder = _Builder()
    builder.build(root, 0)
    problems = []
    for index, step in enumerate(loaded.protocol.steps):
        for field, _, message, value in limit_violations(step, limits, f"{whose} limit "):
            loc = ("steps", index, *(field if isinstance(field, tuple) else (field,)))
            where, node, _ = _locate(loc, builder, root)
            problems.append(_Problem(_line(node), f"{message} (got {value!r})", where))
    try:
        _raise_all(problems)
    except _Problem as problem:
        raise problem.to_error(loaded.path) from None


# --------------------------------------------------------------------------- internals

class _Problem(Exception):
    def __init__(self, line: int | None, message: str, field: str | None = None,
                 more: list["_Problem"] | None = None):
        super().__init__(message)
        self.line, self.message, self.field = line, message, field
        self.more = more or []

    def to_error(self, path) -> ProtocolError:
        everything = [self, *self.more]
        message = self.message
        if self.more:
            message += f" (and {len(self.more)} more problem{'s' if len(self.more) > 1 else ''})"
        error = ProtocolError(path, self.line, self.field, message)
        error.problems = tuple(ProtocolError(path, p.line, p.field, p.message) for p in everything)
        return error


def _one_line(text: str) -> str:
    return re.sub(r"[\r\n\x0b\x0c\x85\u2028\u2029]+", " ", text)


def _load(file: Path) -> LoadedProtocol:
    return _parse(_read_bytes(file), file)


def _parse(data: bytes, file: Path) -> LoadedProtocol:
    sha256 = hashlib.sha256(data).hexdigest()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        column = exc.start - (data.rfind(b"\n", 0, exc.start) + 1) + 1
        raise _Problem(line, f"file is not valid UTF-8 (byte 0x{data[exc.start]:02x} at column {column})") from None

    root = _compose(text)
    target = _deref(root)
    if not isinstance(target, yaml.MappingNode):
        raise _Problem(_line(root), f"the top level must be a mapping of protocol keys, found {_describe_node(target)}")
    builder = _Builder()
    document = builder.build(root, 0)

    try:
        protocol = Protocol.model_validate(document)
    except ValidationError as exc:
        problems = [_problem_from_pydantic(error, builder, root) for error in exc.errors(include_url=False)]
        _raise_all(problems)

    absolute = file.resolve()
    _check_pattern_files(protocol, absolute.parent, builder, root)
    _check_source_files(protocol, absolute.parent, builder, root)
    return LoadedProtocol(protocol=protocol, path=absolute, text=text, sha256=sha256)


def _raise_all(problems: list[_Problem]) -> None:
    if problems:
        problems = sorted(problems, key=lambda p: p.line if p.line is not None else 0)
        first = problems[0]
        first.more = problems[1:]
        raise first


def _read_bytes(file: Path) -> bytes:
    try:
        info = file.stat()
    except (FileNotFoundError, NotADirectoryError):
        raise _Problem(None, "file not found") from None
    except PermissionError:
        raise _Problem(None, "permission denied") from None
    except OSError as exc:
        raise _Problem(None, f"cannot access file ({exc.strerror or exc})") from None
    if stat.S_ISDIR(info.st_mode):
        raise _Problem(None, "is a directory, not a protocol file")
    if not stat.S_ISREG(info.st_mode):
        # A FIFO or device could block or never end.
        raise _Problem(None, "is not a regular file")
    if info.st_size > MAX_FILE_BYTES:
        raise _Problem(None, _too_large(info.st_size))
    try:
        data = file.read_bytes()
    except PermissionError:
        raise _Problem(None, "permission denied, cannot read the file") from None
    except OSError as exc:
        raise _Problem(None, f"cannot read file ({exc.strerror or exc})") from None
    if len(data) > MAX_FILE_BYTES:  # grew after the stat
        raise _Problem(None, _too_large(len(data)))
    return data


def _too_large(size: int) -> str:
    return f"file is {size} bytes, larger than the {MAX_FILE_BYTES // (1 << 20)} MiB limit for a protocol"


# --------------------------------------------------------------------------- YAML composition

class _Alias(yaml.Node):
    """Where an alias was used; ``value`` is the anchored node.

    PyYAML's composer would put the anchored node itself in the graph, which loses the line of
    the alias and turns a self-reference into a cycle that only shows up while walking.
    """

    id = "alias"

    def __init__(self, target: yaml.Node, anchor: str, start_mark, end_mark):
        super().__init__(None, target, start_mark, end_mark)
        self.anchor = anchor


class _Loader(yaml.SafeLoader):
    """SafeLoader's reader, scanner, parser and composer; the constructor is never used."""

    yaml_implicit_resolvers: dict = {}

    def __init__(self, stream: str):
        super().__init__(stream)
        self._depth = 0

    def compose_node(self, parent, index):
        if self.check_event(yaml.AliasEvent):
            event = self.get_event()
            if event.anchor not in self.anchors:
                raise yaml.composer.ComposerError(None, None, f"found undefined alias {event.anchor!r}",
                                                  event.start_mark)
            return _Alias(self.anchors[event.anchor], event.anchor, event.start_mark, event.end_mark)
        event = self.peek_event()
        anchor = getattr(event, "anchor", None)
        if anchor is not None and anchor in self.anchors:
            raise _Problem(_line(event), f"duplicate anchor &{anchor} (first at line {_line(self.anchors[anchor])})")
        tag = getattr(event, "tag", None)
        if tag is not None and tag != "!":  # "!" only forces a plain string
            allowed = _ALLOWED_TAGS.get(type(event), set())
            if tag not in allowed:
                if any(tag in tags for tags in _ALLOWED_TAGS.values()):
                    raise _Problem(_line(event), f"YAML tag {_short_tag(tag)} cannot be applied to "
                                                 f"{_KIND_NAME.get(type(event), 'this node')}")
                raise _Problem(_line(event), f"YAML tags are not allowed (found {_short_tag(tag)})")
        if isinstance(event, yaml.ScalarEvent):
            return super().compose_node(parent, index)
        # Checked while composing because the composer recurses: without a bound, a file of
        # nothing but "[" would exhaust the interpreter's stack.
        self._depth += 1
        try:
            if self._depth > MAX_DEPTH:
                raise _Problem(_line(event), f"nesting is deeper than {MAX_DEPTH} levels")
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1


# The YAML 1.2 core schema. Resolvers are tried in order for a scalar's first character, so
# int comes before float (whose pattern also matches plain digits).
for _tag, _pattern, _first in (
    (_NULL, r"^(?:~|null|Null|NULL|)$", ["~", "n", "N", ""]),
    (_BOOL, r"^(?:true|True|TRUE|false|False|FALSE)$", list("tTfF")),
    (_INT, r"^(?:[-+]?[0-9]+|0o[0-7]+|0x[0-9a-fA-F]+)$", list("-+0123456789")),
    (_FLOAT, r"^(?:[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)(?:[eE][-+]?[0-9]+)?"
             r"|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$", list("-+.0123456789")),
    (_MERGE, r"^(?:<<)$", ["<"]),
):
    _Loader.add_implicit_resolver(_tag, re.compile(_pattern), _first)
del _tag, _pattern, _first


def _compose(text: str) -> yaml.Node:
    loader = None
    try:
        loader = _Loader(text)
        if not loader.check_node():
            raise _Problem(None, "file is empty, expected a YAML mapping of protocol keys")
        root = loader.get_node()
        if loader.check_node():
            raise _Problem(_line(loader.peek_event()),
                           "file holds more than one YAML document (a second '---'); a protocol is one document")
        return root
    except yaml.MarkedYAMLError as exc:
        raise _Problem(_line(exc.problem_mark) if exc.problem_mark else None, _yaml_message(exc)) from None
    except yaml.reader.ReaderError as exc:
        line = text.count("\n", 0, exc.position) + 1 if isinstance(exc.position, int) else None
        what = f"#x{exc.character:04x}" if isinstance(exc.character, int) else repr(exc.character)
        raise _Problem(line, f"unacceptable character {what} in YAML: {exc.reason}") from None
    except yaml.YAMLError as exc:
        raise _Problem(None, f"YAML error: {exc}") from None
    finally:
        if loader is not None:
            loader.dispose()


def _yaml_message(exc: yaml.MarkedYAMLError) -> str:
    parts = []
    if exc.context:
        context = exc.context
        if exc.context_mark is not None and (exc.problem_mark is None
                                             or exc.context_mark.line != exc.problem_mark.line):
            context += f" (line {exc.context_mark.line + 1})"
        parts.append(context)
    if exc.problem:
        parts.append(exc.problem)
    prefix = "YAML error" if isinstance(exc, yaml.composer.ComposerError) else "YAML syntax error"
    return f"{prefix}: " + ": ".join(parts or ["unparsable"])


def _line(node_or_mark) -> int | None:
    mark = getattr(node_or_mark, "start_mark", node_or_mark)
    return mark.line + 1 if mark is not None and hasattr(mark, "line") else None


def _short_tag(tag: str) -> str:
    return "!!" + tag[len(_CORE):] if tag.startswith(_CORE) else tag


def _deref(node: yaml.Node) -> yaml.Node:
    return node.value if isinstance(node, _Alias) else node


def _describe_node(node: yaml.Node) -> str:
    if isinstance(node, yaml.SequenceNode):
        return "a list"
    if node.tag == _NULL:
        return "an empty document"
    value = node.value if len(node.value) <= 40 else node.value[:37] + "..."
    return f"a single value ({value!r})"


# --------------------------------------------------------------------------- building values

def _scalar(node: yaml.ScalarNode) -> Any:
    text = node.value
    try:
        if node.tag == _STR or node.tag == _MERGE:  # a "<<" outside key position is just text
            return text
        if node.tag == _NULL:
            return None
        if node.tag == _BOOL:
            lowered = text.lower()
            if lowered not in ("true", "false"):
                raise ValueError(text)
            return lowered == "true"
        if node.tag == _INT:
            body = text.lstrip("+-")
            sign = -1 if text.startswith("-") else 1
            if body[:2] in ("0o", "0x"):
                return sign * int(body[2:], 8 if body[1] == "o" else 16)
            return sign * int(body, 10)
        if node.tag == _FLOAT:
            lowered = text.lower()
            if lowered.lstrip("+-") == ".inf":
                return float("-inf") if lowered.startswith("-") else float("inf")
            if lowered == ".nan":
                return float("nan")
            return float(text)
    except ValueError:
        raise _Problem(_line(node), f"cannot read {_short_repr(text)} as {_short_tag(node.tag)}") from None
    raise _Problem(_line(node), f"YAML tags are not allowed (found {_short_tag(node.tag)})")


class _Builder:
    """Builds Python values from the node graph, expanding aliases within a budget."""

    def __init__(self):
        self.count = 0
        self._open: set[int] = set()          # collections being built: a revisit is a cycle
        self._merging: set[int] = set()
        self._entries: dict[int, dict] = {}
        self._alias_lines: list[int | None] = []

    def _tick(self, node: yaml.Node) -> None:
        self.count += 1
        if self.count > MAX_EXPANDED_NODES:
            # The outermost alias being expanded is where the blow-up starts.
            line = self._alias_lines[0] if self._alias_lines else _line(node)
            raise _Problem(line, f"document expands to more than {MAX_EXPANDED_NODES} nodes through "
                                 f"anchors and aliases; refusing to load it")

    def build(self, node: yaml.Node, depth: int) -> Any:
        self._tick(node)
        if isinstance(node, _Alias):
            self._alias_lines.append(_line(node))
            try:
                return self._build_target(node.value, depth, node)
            finally:
                self._alias_lines.pop()
        return self._build_target(node, depth, node)

    def _build_target(self, node: yaml.Node, depth: int, used_at: yaml.Node) -> Any:
        if isinstance(node, yaml.ScalarNode):
            return _scalar(node)
        if depth >= MAX_DEPTH:
            line = self._alias_lines[0] if self._alias_lines else _line(used_at)
            raise _Problem(line, f"nesting is deeper than {MAX_DEPTH} levels once aliases are expanded")
        if id(node) in self._open:
            what = f"alias *{used_at.anchor}" if isinstance(used_at, _Alias) else "a merge ('<<')"
            raise _Problem(_line(used_at), f"{what} refers to a node that contains it (recursive structure)")
        self._open.add(id(node))
        try:
            if isinstance(node, yaml.SequenceNode):
                return [self.build(child, depth + 1) for child in node.value]
            return {key: self.build(value, depth + 1) for key, (_, value) in self.entries(node).items()}
        finally:
            self._open.discard(id(node))

    def entries(self, node: yaml.MappingNode) -> dict[Any, tuple[yaml.Node, yaml.Node]]:
        """The effective ``key -> (key node, value node)`` of a mapping, merges applied."""
        cached = self._entries.get(id(node))
        if cached is not None:
            return cached
        self._merging.add(id(node))
        try:
            own: dict[Any, tuple[yaml.Node, yaml.Node]] = {}
            merged: dict[Any, tuple[yaml.Node, yaml.Node]] = {}
            merge_line = None
            for key_node, value_node in node.value:
                self._tick(key_node)
                key_target = _deref(key_node)
                if isinstance(key_target, yaml.ScalarNode) and key_target.tag == _MERGE:
                    if merge_line is not None:
                        raise _Problem(_line(key_node), f"duplicate key '<<' (first at line {merge_line})")
                    merge_line = _line(key_node)
                    for used_at, source in self._merge_sources(value_node):
                        if id(source) in self._merging:
                            raise _Problem(_line(used_at), "a merge ('<<') includes the mapping that contains it")
                        for key, pair in self.entries(source).items():
                            merged.setdefault(key, pair)  # earlier sources win, as YAML specifies
                    continue
                if not isinstance(key_target, yaml.ScalarNode):
                    raise _Problem(_line(key_node), "mapping keys must be plain values, not lists or mappings")
                key = _scalar(key_target)
                if not isinstance(key, str):
                    # Every key of a protocol is a field name; a number, boolean or null key can
                    # only be a typo, and would otherwise surface as a confusing type error.
                    raise _Problem(_line(key_node), f"keys must be text, found {_short_repr(key)} "
                                                    f"(quote it if it is meant as text)")
                if key in own:
                    raise _Problem(_line(key_node), f"duplicate key {key!r} (first at line {_line(own[key][0])})")
                own[key] = (key_node, value_node)
            for key, pair in merged.items():
                own.setdefault(key, pair)  # explicit keys override merged ones
        finally:
            self._merging.discard(id(node))
        self._entries[id(node)] = own
        return own

    def _merge_sources(self, value_node: yaml.Node) -> Iterator[tuple[yaml.Node, yaml.MappingNode]]:
        """(node as written, mapping it stands for) for each mapping merged in."""
        target = _deref(value_node)
        if isinstance(target, yaml.MappingNode):
            yield value_node, target
            return
        if isinstance(target, yaml.SequenceNode):
            for item in target.value:
                self._tick(item)
                item_target = _deref(item)
                if not isinstance(item_target, yaml.MappingNode):
                    raise _Problem(_line(item), "a merge ('<<') list may only hold mappings")
                yield item, item_target
            return
        raise _Problem(_line(value_node), "a merge ('<<') needs a mapping or a list of mappings")


# --------------------------------------------------------------------------- error locations

def _flatten(annotation) -> list:
    origin = typing.get_origin(annotation)
    if origin is typing.Annotated:
        return _flatten(typing.get_args(annotation)[0])
    if origin is typing.Union or origin is types.UnionType:
        return [leaf for arg in typing.get_args(annotation) for leaf in _flatten(arg)]
    return [annotation]


def _is_model(candidate) -> bool:
    return isinstance(candidate, type) and issubclass(candidate, BaseModel)


def _tag_of(model) -> str | None:
    field = model.model_fields.get("kind")
    if field is None or typing.get_origin(field.annotation) is not typing.Literal:
        return None
    return typing.get_args(field.annotation)[0]


def _walk_schema(loc) -> tuple[list[bool], list]:
    """Which parts of a pydantic ``loc`` are union tags, and the types reached at its end.

    Discriminated unions add the member's tag to the location (``steps.0.program.tolerance``).
    Whether a part is such a tag depends on the schema, not the data: ``levels`` is both the tag
    of a pattern and a field of that pattern.
    """
    current: list = [Protocol]
    is_tag: list[bool] = []
    for part in loc:
        leaves = [leaf for t in current for leaf in _flatten(t)]
        tagged = [m for m in leaves if _is_model(m) and _tag_of(m) is not None]
        if isinstance(part, str) and len(tagged) > 1 and any(_tag_of(m) == part for m in tagged):
            current = [m for m in tagged if _tag_of(m) == part]
            is_tag.append(True)
            continue
        is_tag.append(False)
        following = []
        for leaf in leaves:
            if isinstance(part, int) and typing.get_origin(leaf) in (list, tuple):
                following.extend(typing.get_args(leaf)[:1])
            elif isinstance(part, str) and _is_model(leaf) and part in leaf.model_fields:
                following.append(leaf.model_fields[part].annotation)
        current = following
    return is_tag, [leaf for t in current for leaf in _flatten(t)]


def _locate(loc, builder: _Builder, root: yaml.Node) -> tuple[str | None, yaml.Node, yaml.Node | None]:
    """(dotted field, deepest node reached, key node of the last mapping step) for a loc."""
    is_tag, _ = _walk_schema(loc)
    node: yaml.Node = root
    key_node = None
    field = ""
    reached = True
    for part, tag in zip(loc, is_tag):
        if tag:
            continue
        field += f"[{part}]" if isinstance(part, int) else (f".{part}" if field else str(part))
        if not reached:
            continue
        target = _deref(node)
        if isinstance(part, int) and isinstance(target, yaml.SequenceNode) and 0 <= part < len(target.value):
            node, key_node = target.value[part], None
        elif isinstance(target, yaml.MappingNode) and part in builder.entries(target):
            key_node, node = builder.entries(target)[part]
        else:
            reached = False
            key_node = None
    return field or None, node, key_node


def _short_repr(value: Any) -> str | None:
    if value is None or isinstance(value, (bool, int, float, str)):
        text = repr(value)
        return text if len(text) <= 60 else text[:57] + "..."
    return None


def _problem_from_pydantic(error: dict, builder: _Builder, root: yaml.Node) -> _Problem:
    kind = error["type"]
    loc = tuple(error["loc"])
    message = error["msg"]
    show_input = True
    ctx = error.get("ctx") or {}

    if kind == "extra_forbidden":
        key = loc[-1]
        message = f"unknown key {key!r}"
        _, models = _walk_schema(loc[:-1])
        known = sorted({name for m in models if _is_model(m) for name in m.model_fields})
        close = difflib.get_close_matches(str(key), known, n=1)
        if close:
            message += f" (did you mean {close[0]!r}?)"
        show_input = False
    elif kind == "union_tag_invalid":
        message = (f"unknown kind {ctx.get('tag')!r}; expected one of {ctx.get('expected_tags')}")
        loc = loc + ("kind",)
        show_input = False
    elif kind == "union_tag_not_found":
        _, models = _walk_schema(loc)
        tags = ", ".join(repr(_tag_of(m)) for m in models if _is_model(m) and _tag_of(m))
        message = "missing key 'kind'" + (f" (one of {tags})" if tags else "")
        show_input = False
    elif kind == "missing":
        message = "required field is missing"
        show_input = False
    elif kind in ("value_error", "assertion_error"):
        message = re.sub(r"^(Value|Assertion) error, ", "", message)

    if show_input:
        shown = _short_repr(error.get("input"))
        if shown is not None:
            message += f" (got {shown})"

    field, node, key_node = _locate(loc, builder, root)
    anchor = key_node if kind == "extra_forbidden" and key_node is not None else node
    return _Problem(_line(anchor), message, field)


def _check_pattern_files(protocol: Protocol, base_dir: Path, builder: _Builder, root: yaml.Node) -> None:
    """Open every file pattern once, so a missing or misshapen file fails now, not mid-run."""
    problems = []
    rows, cols = protocol.array.rows, protocol.array.cols
    for index, step in enumerate(protocol.steps):
        pattern = getattr(step, "pattern", None)
        if not isinstance(pattern, FilePattern):
            continue
        try:
            pattern.targets(rows, cols, np.random.default_rng(0), base_dir)
        except (ValueError, OSError) as exc:
            field, node, _ = _locate(("steps", index, "pattern", "path"), builder, root)
            problems.append(_Problem(_line(node), str(exc), field))
    _raise_all(problems)


def _check_source_files(protocol: Protocol, base_dir: Path, builder: _Builder, root: yaml.Node) -> None:
    """Read the files of every calibrate step's ``source`` in full, so that a bad file is refused now, with
    the file and the place in it, before anything runs or is recorded."""
    problems = []
    shape = (protocol.array.rows, protocol.array.cols)
    for index, step in enumerate(protocol.steps):
        source = getattr(step, "source", None)
        if source is None:
            continue
        try:
            source.read(base_dir, shape)
        except ValueError as exc:
            field = "file" if source.file is not None else "files"
            where, node, _ = _locate(("steps", index, "source", field), builder, root)
            problems.append(_Problem(_line(node), str(exc), where))
    _raise_all(problems)
