"""Options declared once, as dataclass fields that carry their default and help text.

A library function takes a dataclass of options; the command line derives its options from the
same fields (:mod:`fuse4seg.commands`), so a default, a check or a help text is written in one place::

    @dataclass(frozen=True)
    class RunOptions:
        out: str = option(help="Run directory.")                      # required: no default
        steps: int = option(100, "Total steps.", check=at_least(1, integer=True))
        threads: int = option(1, "CPU threads.", recorded=False)     # does not change the result

    @COMMANDS.command("run", "mypackage.options:RunOptions")         # fuse4seg.commands.Commands
    def run_command(options: RunOptions) -> None:
        run(check_options(options))

A field's flag is ``--`` + its name with ``-`` for ``_`` (:func:`fuse4seg.errors.flag_for`) unless
``option(flag=...)`` says otherwise. Library errors name the field
(``ConfigError("must be >= 1", option="steps")``) and the command line shows the flag;
:func:`for_option` attaches a field to an error raised by a helper that does not know it.
:func:`command_argv` writes an options object back as command-line arguments (to record how a
result was made).

The one set of declared checks lives here (a check is value -> what is wrong with it, or None; one message
style, naming the bound broken: ``must be >= 1, got 0``): :func:`in_range`, :func:`at_least`, :func:`above`,
:func:`one_of`, :func:`one_of_named`, :func:`required`, :func:`integer_entries`, :func:`seed_problem` (every seed is a 32-bit
integer, :data:`MAX_SEED`), :func:`worker_count` (bounded by :func:`available_cpus`) and
:func:`device_problem`. :func:`check_options` runs the checks an options object's fields declare. A field
declared ``option(..., argument=True)`` is a positional command-line argument (``fuse4seg verify DIR``);
:mod:`fuse4seg.commands` turns an options class into a command.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import numbers
import os
import typing
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from fuse4seg.errors import ConfigError, Fuse4SegError, flag_for

_FROM_FIELD = object()
#: Largest seed, 2**32 - 1 (seeds are integers in [0, MAX_SEED]). numpy's SeedSequence takes any
#: non-negative integer and torch.manual_seed up to 2**64 - 1, but numpy's legacy seeding (np.random.seed,
#: RandomState, which DataLoader workers and augmentation libraries may be seeded through) takes only
#: 32 bits; one range that every consumer accepts, and that config.json, HDF5 attributes and command
#: lines record exactly, keeps a seed meaning one thing everywhere.
MAX_SEED: int = 2**32 - 1

# Upper bounds shared by several commands (train, pretrain, evaluate, demo), each stated in its options' help and far
# above any sensible run: a mistyped value (an extra digit, a 20-digit number) is refused before it allocates.
#: Slices per batch: 512 slices of 240 x 240 already need tens of GB of UNet activations.
MAX_BATCH_SIZE: int = 512
#: Steps, and every "each N steps" period: 10 million steps are months at several steps a second.
MAX_STEPS: int = 10_000_000
#: Slices (a 3-D run: volumes) scored: more than any package holds (BraTS 2023's ~2,600 cases x 155 slices = 400k).
MAX_EVAL_SLICES: int = 10_000_000
#: torch CPU threads: more threads than any machine has cores only oversubscribes them.
MAX_THREADS: int = 1024
#: Feature maps of a network's widest full-resolution layer (16 by default).
MAX_WIDTH: int = 512
#: UNet downsamplings: a 240-pixel BraTS slice halved 8 times (2**8 = 256) is down to one pixel.
MAX_SEG_DEPTH: int = 8
#: UNet bottleneck channels, width * 2**depth (16 * 2**4 = 256 by default; the original UNet has 1024): the
#: parameters grow with its square (2048 channels: ~100M parameters).
MAX_SEG_CHANNELS: int = 2048
#: A declared check: value -> what is wrong with it, or None.
Check = Callable[[Any], "str | None"]


def option(default: Any = dataclasses.MISSING, help: str = "", *, flag: str | None = None, recorded: bool = True,
           **metadata: Any) -> Any:
    """A dataclass field declaring one option, everything about it in its ``metadata``.

    ``default`` (none: required); ``help`` text; ``flag``, when not ``--`` + the name with dashes;
    ``recorded``: whether :func:`command_argv` writes the value into a command line that reproduces
    a result (False for options that change how, not what, e.g. worker counts); ``metadata``: more
    keys for the declaration's other readers (``check``: a :data:`Check` run by :func:`check_options`;
    ``argument=True``: a positional command-line argument; ``modes``, ... of
    :func:`fuse4seg.train.declare.option`, ``methods`` of the bi-level engine's ``Options``).
    Keys whose value is None are left out (absent means "not declared"). A mutable default (list,
    dict, set or dataclass instance) is copied for every instance (a ``default_factory``).
    """
    declared = {"help": help, "flag": flag, "recorded": recorded, **metadata}
    declared = {k: v for k, v in declared.items() if v is not None}
    if dataclasses.is_dataclass(default) and not isinstance(default, type):
        return dataclasses.field(default_factory=lambda: dataclasses.replace(default), metadata=declared)
    if isinstance(default, (list, dict, set)):
        return dataclasses.field(default_factory=lambda: type(default)(default), metadata=declared)
    return dataclasses.field(default=default, metadata=declared)


# ---- declared checks: value -> what is wrong with it, or None ------------------------------------------


def _number_text(value: float) -> str:
    """A bound or value as a message writes it: 8, 0.5, 1e-06."""
    return f"{value:g}" if isinstance(value, float) else str(value)


def in_range(low: float = -math.inf, high: float = math.inf, note: str = "", low_open: bool = False, *,
             high_open: bool = False, unit: str = "", integer: bool = False, optional: bool = False) -> Check:
    """Check: a finite number with ``low <= v <= high`` (``<`` with ``low_open`` / ``high_open``), an integer with
    ``integer``; None passes only when ``optional`` (a declared option whose type admits None is never checked when
    None: see :func:`check_options`). The message names the bound broken (``must be >= 1, got 0``); ``unit``
    follows either bound, ``note`` the lower one."""
    def check(v: Any) -> str | None:
        """What is wrong with ``v``, or None."""
        if v is None and optional:
            return None
        if isinstance(v, bool) or not isinstance(v, numbers.Integral if integer else numbers.Real):
            return f"must be {'an integer' if integer else 'a number'}, got {v!r}"
        if not math.isfinite(v):
            return f"must be finite, got {v}"
        if v < low or (low_open and v == low):
            return f"must be {'>' if low_open else '>='} {_number_text(low)}{unit}{note}, got {_number_text(v)}"
        if v > high or (high_open and v == high):
            return f"must be {'<' if high_open else '<='} {_number_text(high)}{unit}, got {_number_text(v)}"
        return None
    return check


def at_least(low: float, note: str = "", *, integer: bool = False) -> Check:
    """Check: >= ``low`` (an integer with ``integer``)."""
    return in_range(low, note=note, integer=integer)


def above(low: float) -> Check:
    """Check: > ``low``."""
    return in_range(low, low_open=True)


def one_of(choices: Iterable[object], *, ignore_case: bool = False) -> Check:
    """Check: one of ``choices`` (with ``ignore_case``, a text compared in lower case: for options their reader
    lower-cases)."""
    allowed = tuple(choices)

    def check(v: Any) -> str | None:
        """What is wrong with ``v``, or None."""
        key = v.lower() if ignore_case and isinstance(v, str) else v
        return None if key in allowed else f"must be one of {', '.join(map(str, allowed))}, got {v!r}"
    return check


def one_of_named(target: str, *, ignore_case: bool = False) -> Check:
    """Check: :func:`one_of` the choices at ``"package.module:NAME"`` (a tuple, or a dict's keys), imported when a
    value is first checked, not when the option is declared (``fuse4seg CMD --help`` imports no library)."""
    def check(v: Any) -> str | None:
        """What is wrong with ``v``, or None."""
        import importlib

        module, _, name = target.partition(":")
        return one_of(getattr(importlib.import_module(module), name), ignore_case=ignore_case)(v)
    return check


def required(what: str) -> Check:
    """Check: a non-empty value (``what`` names it: "a run directory is required")."""
    return lambda v: None if v else f"{what} is required"


def integer_entries(limits: dict[str, tuple[int, int]]) -> Check:
    """Check: a table whose entries named in ``limits`` (when present) are integers in [low, high]; other entries
    are left to their reader (e.g. a model's own options)."""
    def check(table: dict) -> str | None:
        """What is wrong with ``table``, or None."""
        for entry, (low, high) in limits.items():
            value = table.get(entry)
            problem = None if value is None else in_range(low, high, integer=True)(value)
            if problem:
                return f"{entry} {problem}"
        return None
    return check


def a_path(then: Check | None = None) -> Check:
    """Check: None, or a path that a file system here can hold (:func:`fuse4seg.user_files.path_problem`: no NUL byte, no
    name over ``PC_NAME_MAX``, no path over ``PC_PATH_MAX`` bytes), then ``then`` (if given)."""
    from fuse4seg.user_files import path_problem

    def check(v: Any) -> str | None:
        """What is wrong with ``v``, or None."""
        problem = path_problem(v) if isinstance(v, (str, os.PathLike)) else None
        return problem or (then(v) if then else None)
    return check


def worker_count(low: int = 0) -> Check:
    """Check: an integer from ``low`` up to the CPUs this process may use (:func:`available_cpus`)."""
    def check(v: Any) -> str | None:
        """What is wrong with ``v``, or None."""
        problem = in_range(low, integer=True)(v)
        cpus = available_cpus()
        return problem or (None if v <= cpus else f"must be <= {cpus}, the CPUs available here, got {v}")
    return check


def device_problem(value: object) -> str | None:
    """What is wrong with ``value`` as a torch device name (cpu, cuda or cuda:N), or None."""
    if isinstance(value, str) and (value in ("cpu", "cuda") or value.startswith("cuda:")):
        return None
    return f"must be cpu or cuda, got {value!r}"


def check_options(options: Any) -> Any:
    """Run the ``check`` every field of the dataclass instance ``options`` declares, in declaration order;
    ConfigError naming the first field whose value fails. Returns ``options``."""
    hints = typing.get_type_hints(type(options))
    for field in dataclasses.fields(options):
        check, value = field.metadata.get("check"), getattr(options, field.name)
        if value is None and type(None) in typing.get_args(hints[field.name]):
            continue  # None means "not given" for an option whose type admits it
        problem = check(value) if check else None
        if problem:
            raise ConfigError(problem, option=field.name)
    return options


class CheckedOptions:
    """Base of a command's options dataclass: a new instance runs every field's declared check
    (:func:`check_options`), so a bad value is a ConfigError naming its option before any work starts."""

    def __post_init__(self) -> None:
        """ConfigError naming the first option out of its declared bounds."""
        check_options(self)


def seed_problem(value: object) -> str | None:
    """What is wrong with ``value`` as a seed (an integer in [0, :data:`MAX_SEED`]), or None."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or not 0 <= value <= MAX_SEED:
        return f"must be an integer in [0, {MAX_SEED}] (32 bits), got {value!r}"
    return None


def check_seed(value: object, option: str = "seed") -> int:
    """``value`` as a seed (an integer in [0, :data:`MAX_SEED`]); ConfigError naming ``option`` otherwise."""
    problem = seed_problem(value)
    if problem:
        raise ConfigError(problem, option=option)
    assert isinstance(value, numbers.Integral)  # checked above; for the type checker
    return int(value)


def available_cpus() -> int:
    """CPUs this process may run on (its affinity mask where the system has one, else os.cpu_count(); >= 1)."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return max(1, os.cpu_count() or 1)


def fields_by_name(cls: type) -> dict[str, dataclasses.Field]:
    """The dataclass fields of ``cls`` (a class or instance), by name, in declaration order."""
    return {f.name: f for f in dataclasses.fields(cls)}


def flag_of(field: dataclasses.Field) -> str:
    """The command-line flag of ``field``: its declared ``flag``, else ``--field-name``."""
    return field.metadata.get("flag") or flag_for(field.name)


def default_of(field: dataclasses.Field) -> Any:
    """The default value of ``field``; ``...`` (Typer's "required") when it has none."""
    if field.default is not dataclasses.MISSING:
        return field.default
    if field.default_factory is not dataclasses.MISSING:
        return field.default_factory()
    return ...


def cli_text(value: object) -> str:
    """``value`` as written on a command line: sequences comma-separated, floats as short as round-trips
    ('0.25', '1', not '1.0'), paths as strings."""
    if isinstance(value, (tuple, list)):
        return ",".join(cli_text(v) for v in value)
    if isinstance(value, float):
        short = f"{value:g}"
        return short if float(short) == value else repr(value)
    return os.fspath(value) if isinstance(value, os.PathLike) else str(value)


def typer_option(field: dataclasses.Field, flag: str | None = None, default: Any = _FROM_FIELD) -> Any:
    """A ``typer.Option`` for ``field``: its flag (``flag`` overrides), its help text, and its default
    (``default`` overrides; a sequence default is shown as comma-separated text, which is what the
    command-line parameter receives)."""
    import typer

    value = default_of(field) if default is _FROM_FIELD else default
    if isinstance(value, (tuple, list)):
        value = cli_text(value)
    return typer.Option(value, flag or flag_of(field), help=field.metadata.get("help", ""))


def command_argv(options: object, omit: Iterable[str] = ()) -> list[str]:
    """The command-line arguments that give the recorded fields of the dataclass ``options`` their values:
    ``--flag value`` per field, a bare ``--flag`` for a true bool; fields that are None, false bools,
    declared ``recorded=False`` or named in ``omit`` are left out."""
    argv: list[str] = []
    skip = set(omit)
    for field in dataclasses.fields(options):
        value = getattr(options, field.name)
        if field.name in skip or not field.metadata.get("recorded", True) or value is None or value is False:
            continue
        flag = flag_of(field).split("/")[0]  # "--cache/--no-cache": --cache gives True
        argv += [flag] if value is True else [flag, cli_text(value)]
    return argv


@contextlib.contextmanager
def for_option(name: str) -> Iterator[None]:
    """Attach the parameter ``name`` to a Fuse4SegError raised inside the block that names none (from a
    helper such as a parser that does not know which option it parses)."""
    try:
        yield
    except Fuse4SegError as exc:
        if exc.option:
            raise
        raise type(exc)(exc.message, option=name) from None
