"""Commands derived from options declared once: a dataclass of :func:`fuse4seg.options.option` fields becomes a
Typer command whose parameters are its fields (flag, default, help; ``argument=True``: positional), and the
command hands the library an instance of the dataclass::

    COMMANDS = Commands()

    @COMMANDS.command("phantom", "fuse4seg.data.phantom.options:PhantomOptions")
    def phantom_command(options: PhantomOptions) -> None:
        \"\"\"Write a synthetic BraTS release.\"\"\"
        write_release(options)

A command is built when it is first asked for (:class:`CommandGroup`), so the options module of one command
(which may import torch) is not imported to run another. No torch here: ``fuse4seg --help`` stays fast.
"""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import types
import typing
from collections.abc import Callable, Iterable
from typing import Any

import click
import typer
import typer.core
import typer.main

from fuse4seg.errors import ConfigError, flag_for
from fuse4seg.options import default_of, typer_option
from fuse4seg.user_files import path_problem

#: One command-line parameter: (name, annotation, its :func:`fuse4seg.options.option` declaration).
Parameter = tuple[str, Any, dataclasses.Field]
#: A command's body: (parameter values by name, names given on the command line) -> None.
Body = Callable[[dict[str, Any], frozenset[str]], None]


def cli_type(tp: Any) -> Any:
    """The type a command-line parameter is parsed as for a field of type ``tp``: a tuple is comma-separated
    text (``str``; the options class parses it), ``X | None`` stays optional, anything else is itself."""
    args = typing.get_args(tp)
    optional = (isinstance(tp, types.UnionType) or typing.get_origin(tp) is typing.Union) and type(None) in args
    base = next(a for a in args if a is not type(None)) if optional else tp
    if typing.get_origin(base) is tuple:
        base = str
    return base | None if optional else base


def parameters_of(cls: type) -> list[Parameter]:
    """The command-line parameters of the options dataclass ``cls``, one per field, in declaration order."""
    hints = typing.get_type_hints(cls)
    return [(f.name, cli_type(hints[f.name]), f) for f in dataclasses.fields(cls)]


def typer_parameter(name: str, field: dataclasses.Field) -> Any:
    """A ``typer.Argument`` for a field declared ``argument=True``, else :func:`fuse4seg.options.typer_option`
    (flag: the declared one, else ``--`` + ``name`` with dashes)."""
    if field.metadata.get("argument"):
        return typer.Argument(default_of(field), help=field.metadata.get("help", ""))
    return typer_option(field, field.metadata.get("flag") or flag_for(name))


def build_command(name: str, body: Body, parameters: Iterable[Parameter], doc: str | None) -> click.Command:
    """The click command ``name`` with ``parameters`` (and help ``doc``) that calls ``body`` with their values and
    the names given on the command line (click's parameter source, as opposed to a default)."""
    def invoke(ctx: typer.Context, **values: Any) -> None:
        """Run the command's body."""
        # By name: typer's ParameterSource is its own copy of click's enum.
        given = frozenset(k for k in values if getattr(ctx.get_parameter_source(k), "name", None) == "COMMANDLINE")
        check_paths(values, declared)
        body(values, given)

    parameters = list(parameters)
    declared = {n: f for n, _, f in parameters if f.metadata.get("path")}
    keyword = inspect.Parameter.KEYWORD_ONLY
    invoke.__signature__ = inspect.Signature(  # type: ignore[attr-defined]
        [inspect.Parameter("ctx", keyword, annotation=typer.Context)]
        + [inspect.Parameter(n, keyword, default=typer_parameter(n, f), annotation=tp) for n, tp, f in parameters])
    invoke.__doc__ = doc
    single = typer.Typer(add_completion=False, pretty_exceptions_enable=False)
    single.command(name)(invoke)
    return typer.main.get_command(single)


def check_paths(values: dict[str, Any], declared: dict[str, dataclasses.Field]) -> None:
    """ConfigError naming the flag (or argument) of the first value of a field declared ``path=True`` that no file
    system here can hold (:func:`fuse4seg.user_files.path_problem`: a NUL byte, a name over ``PC_NAME_MAX`` or a path over
    ``PC_PATH_MAX`` bytes), before the command opens or makes anything."""
    for name, field in declared.items():
        value = values.get(name)
        for path in value if isinstance(value, (list, tuple)) else (value,):
            problem = None if path is None else path_problem(path)
            if problem:
                where = name.upper() if field.metadata.get("argument") else (field.metadata.get("flag")
                                                                             or flag_for(name)).split("/")[0]
                raise ConfigError(f"{where}: {problem}")


def options_command(name: str, cls: type, run: Callable[..., None]) -> click.Command:
    """The command ``name`` whose parameters are the fields of the options dataclass ``cls``; it calls
    ``run(cls(**values))``, or ``run(options, given)`` when ``run`` takes ``given`` (the field names given on the
    command line). Its help is ``run``'s docstring."""
    wants_given = "given" in inspect.signature(run).parameters

    def body(values: dict[str, Any], given: frozenset[str]) -> None:
        """Build the options and run."""
        options = cls(**values)
        run(options, given) if wants_given else run(options)

    return build_command(name, body, parameters_of(cls), inspect.getdoc(run))


def load(target: str) -> Any:
    """The object at ``"package.module:name"``."""
    module, _, name = target.partition(":")
    return getattr(importlib.import_module(module), name)


class Commands(dict):
    """Command name -> a function that builds it; filled by :meth:`command` in the order commands are listed."""

    def command(self, name: str, options: str) -> Callable[[Callable[..., None]], Callable[..., None]]:
        """Register a function ``run(options)`` as the command ``name``, its options the dataclass at ``options``
        (``"module:Class"``, imported when the command is built)."""
        def register(run: Callable[..., None]) -> Callable[..., None]:
            """Record how to build the command."""
            self[name] = lambda: options_command(name, load(options), run)
            return run
        return register

    def add(self, name: str, build: Callable[[], click.Command]) -> None:
        """Register a command built by ``build`` (one whose parameters are not one options class's fields)."""
        self[name] = build


class _Built(dict):
    """Command name -> click command, each built from a :class:`Commands` registry when first looked up."""

    def __init__(self, registry: Commands) -> None:
        """An empty cache over ``registry``."""
        super().__init__()
        self.registry = registry

    def __missing__(self, name: str) -> click.Command:
        """Build the command ``name`` (KeyError if it is not registered)."""
        command = self[name] = self.registry[name]()
        return command


class CommandGroup(typer.core.TyperGroup):
    """A group whose commands come from the :class:`Commands` registry ``registry`` (a class attribute: Typer
    creates the group from its class, see :func:`command_group`), each built on first use (``commands[name]``
    or :meth:`get_command`)."""

    registry: Commands = Commands()

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        """A Typer group whose ``commands`` build themselves on lookup."""
        super().__init__(*args, **kwargs)
        self.commands = _Built(self.registry)

    def list_commands(self, ctx: click.Context) -> list[str]:
        """The registered command names, in registration order."""
        return list(self.registry)

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        """The command ``name``, built from its declarations on first use; None if there is none."""
        return self.commands[name] if name in self.registry else None


def command_group(registry: Commands) -> type[CommandGroup]:
    """A :class:`CommandGroup` class listing the commands of ``registry`` (for ``typer.Typer(cls=...)``)."""
    return type("Commands", (CommandGroup,), {"registry": registry})
