"""Options declared once, as dataclass fields, and what derives from the declarations.

An option is a field whose ``metadata`` says everything about it (see :func:`option`): its help,
its check, its command-line flag when that is not ``--`` + its name, how to parse text into it,
and the training modes that read it. A field whose type is a dataclass is a group whose own fields
are options too (``TrainConfig.engine``, the bi-level engine's ``Options``); they are known to
the user by their flag (``steps`` is ``--inner-steps``, key ``inner_steps``), so every option has
one flat name, its *key*: the TOML key, the key in ``config.json`` and the flag without ``--``.
Fields whose metadata says ``runtime`` (a value passed between calls) are not options.

Derived here: the list of declared options, conversion of TOML/JSON/command-line values to the
declared types, the flat stored dict and back, and the relabelling of a group's own errors to keys.
The checks an option declares are :mod:`fuse4seg.options`' (:func:`fuse4seg.options.in_range` and the like).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import math
import types
import typing
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from fuse4seg import options
from fuse4seg.errors import ConfigError, flag_for
from fuse4seg.options import Check


def option(default: Any, help: str, *, check: Check | None = None, flag: str | None = None,
           parse: Callable[[Any], Any] | None = None, modes: tuple[str, ...] | None = None,
           where: str | None = None, entries: dict[str, tuple[type, str]] | None = None,
           shortcuts: dict[str, str] | None = None, **extra: Any) -> Any:
    """A dataclass field declaring one training option (:func:`fuse4seg.options.option` with these keys).

    ``help``: one line for ``--help``; ``check``: value -> problem or None; ``flag``: the
    command-line flag(s) when not ``--`` + name with dashes (``--region-based/--label-based``);
    ``parse``: text or list -> value, for types the generic conversion does not know; ``modes``:
    the training modes that read it (None: every mode), ``where``: how an error says where it
    applies (default ``--mode a, b``); ``entries``: for an option table (dict, otherwise TOML and
    stored dict only), entry -> (type, help), each a flag ``--PREFIX-ENTRY``; ``shortcuts``: value ->
    help, each a boolean flag ``--VALUE`` that sets this option to VALUE; ``extra``: more metadata
    (e.g. ``resumable``, or ``validate`` for a group). Mutable defaults (dict, dataclass) are copied
    for every instance.
    """
    return options.option(default, help, flag=flag, check=check, parse=parse, modes=modes, where=where,
                          entries=entries, shortcuts=shortcuts, **extra)


@dataclass(frozen=True)
class Declared:
    """One declared option: its key, where it sits in the config, its field and resolved type."""

    key: str
    path: tuple[str, ...]
    field: dataclasses.Field
    type: Any
    group: dataclasses.Field | None = None

    @property
    def metadata(self) -> typing.Mapping[str, Any]:
        """The field's declaration."""
        return self.field.metadata

    @property
    def flag(self) -> str:
        """Its command-line flag declaration, e.g. ``--inner-steps`` or ``--cache/--no-cache``."""
        return self.metadata.get("flag") or flag_for(self.key)

    @property
    def base_type(self) -> Any:
        """The declared type without ``| None``."""
        return _strip_none(self.type)[0]

    @property
    def optional(self) -> bool:
        """Whether None is a value of this option."""
        return _strip_none(self.type)[1]

    def get(self, obj: Any) -> Any:
        """This option's value in ``obj`` (the config)."""
        for name in self.path:
            obj = getattr(obj, name)
        return obj


def key_of(flag: str) -> str:
    """``--inner-steps`` (or ``--region-based/--label-based``) -> ``inner_steps``."""
    return flag.split("/")[0].removeprefix("--").replace("-", "_")


@functools.cache
def declared(cls: type) -> tuple[Declared, ...]:
    """Every option of the dataclass ``cls``, groups expanded, in declaration order."""
    def key(f: dataclasses.Field) -> str:
        """An option's key: from its declared flag, else its field name."""
        return key_of(f.metadata["flag"]) if "flag" in f.metadata else f.name

    out = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        group = hints[f.name]
        if dataclasses.is_dataclass(group):
            inner = typing.get_type_hints(group)
            out += [Declared(key(g), (f.name, g.name), g, inner[g.name], f)
                    for g in dataclasses.fields(group) if not g.metadata.get("runtime")]
        else:
            out.append(Declared(key(f), (f.name,), f, group))
    keys = [d.key for d in out]
    assert len(set(keys)) == len(keys), f"two options of {cls.__name__} share a key: {keys}"
    return tuple(out)


@functools.cache
def by_key(cls: type) -> dict[str, Declared]:
    """The options of ``cls`` by key."""
    return {d.key: d for d in declared(cls)}


def _strip_none(tp: Any) -> tuple[Any, bool]:
    """(inner type, optional?) for ``X | None`` annotations."""
    if isinstance(tp, types.UnionType) or typing.get_origin(tp) is typing.Union:
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return args[0], True
    return tp, False


def convert(d: Declared, value: Any, where: str = "") -> Any:
    """``value`` (from TOML, JSON or the command line) as option ``d``'s declared type.

    ConfigError naming the option's key (``where`` is appended to the message, e.g. " (in c.toml)").
    """
    tp, optional = d.base_type, d.optional
    if value is None or (optional and isinstance(value, str) and value.lower() in ("", "none")):
        if optional:
            return None
        raise ConfigError(f"a value is required{where}", option=d.key)
    bad = ConfigError(f"expected {getattr(tp, '__name__', str(tp))}, got {value!r}{where}", option=d.key)
    if "parse" in d.metadata:
        try:
            return d.metadata["parse"](value)
        except ConfigError as exc:
            raise ConfigError(f"{exc}{where}", option=d.key) from None
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no"):
            return value.lower() in ("true", "1", "yes")
        raise bad
    if tp in (int, float) and isinstance(value, bool):
        raise bad
    if tp is int:
        if isinstance(value, int) or (isinstance(value, float) and value.is_integer()):
            return int(value)
        if not isinstance(value, str):
            raise bad
        try:
            return int(value)
        except ValueError:
            raise bad from None
    if tp is float:
        try:
            out = float(value)
        except (TypeError, ValueError):
            raise bad from None
        if not math.isfinite(out):
            raise ConfigError(f"must be finite, got {value!r}{where}", option=d.key)
        return out
    if tp in (str, dict) and isinstance(value, tp):
        return tp(value)
    if typing.get_origin(tp) is tuple and isinstance(value, (list, tuple)) and len(value) == len(typing.get_args(tp)):
        items = [Declared(d.key, d.path, d.field, t) for t in typing.get_args(tp)]
        return tuple(convert(item, v, where) for item, v in zip(items, value))
    raise bad


def plain(value: Any) -> Any:
    """A JSON/TOML-able form of an option value (tuples become lists)."""
    return [plain(v) for v in value] if isinstance(value, tuple) else value


def to_values(obj: Any) -> dict[str, Any]:
    """Every option of the config ``obj`` by key, JSON-able (the stored form)."""
    return {d.key: plain(d.get(obj)) for d in declared(type(obj))}


def with_values(obj: Any, values: dict[str, Any]) -> Any:
    """A copy of the config ``obj`` with the options in ``values`` (key -> converted value) set."""
    top: dict[str, Any] = {}
    groups: dict[str, dict[str, Any]] = {}
    for key, value in values.items():
        d = by_key(type(obj))[key]
        if d.group is None:
            top[d.path[0]] = value
        else:
            groups.setdefault(d.path[0], {})[d.path[1]] = value
    for name, sub in groups.items():
        top[name] = dataclasses.replace(getattr(obj, name), **sub)
    return dataclasses.replace(obj, **top)


def check_values(obj: Any) -> None:
    """Run every option's declared check, and each group's ``validate``; ConfigError naming the key.

    A group's ``validate`` (e.g. the engine's ``parse_options``) raises errors that name its own
    fields; they are relabelled to the options' keys here.
    """
    for d in declared(type(obj)):
        if d.get(obj) is None and d.optional:
            continue  # None means "not given" for an option whose type admits it
        check = d.metadata.get("check") if d.group is None else None
        problem = check(d.get(obj)) if check else None
        if problem:
            raise ConfigError(problem, option=d.key)
    for f in dataclasses.fields(obj):
        if "validate" in f.metadata:
            group = getattr(obj, f.name)
            with relabelled(type(obj), f.name):
                f.metadata["validate"]({g.name: getattr(group, g.name) for g in dataclasses.fields(group)})


@contextlib.contextmanager
def relabelled(cls: type, group: str) -> Iterator[None]:
    """Re-raise a ConfigError that names a field of the group ``group`` of ``cls`` (or a top-level field of
    ``cls``) by field name as naming that option's key (``steps`` of the engine -> ``inner_steps``)."""
    keys = {d.path[0]: d.key for d in declared(cls) if d.group is None}
    keys.update({d.path[1]: d.key for d in declared(cls) if d.path[0] == group and d.group is not None})
    try:
        yield
    except ConfigError as exc:
        if exc.option not in keys or keys[exc.option] == exc.option:
            raise
        raise ConfigError(exc.message, option=keys[exc.option]) from None
