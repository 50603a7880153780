"""How a config setting is declared: `setting(...)` fields, their checks, and the engine options they reach.

launch/config.py declares every setting of a run with `setting`; this module
holds the declaration's machinery. A setting that is an engine option says so
(`engine="group.field"`), and `engine_options` builds the engine's option groups
(engine/options.py) and the Trainer's keywords from those declarations, so a
setting is declared once and reaches the Trainer without glue.
"""

from __future__ import annotations

import dataclasses
import os
import tempfile
import typing
from typing import Any, Callable, Iterable

from engine.errors import UserError
from engine.options import CheckpointOptions, GuardOptions, KernelOptions

# What a rerun on the same model_dir may not change without --allow_config_change:
LOCKED = "locked"  # the checkpoint's structure or the meaning of its step (model, batch, optimizer).
LOCKED_IF_DETERMINISTIC = "locked_if_deterministic"  # the data order a --deterministic run replays.


_NOT_OFF = object()


def setting(default, help: str, *, flag: str | None = None, choices: Iterable[str] | None = None,
            rule: tuple[str, Callable[[Any], bool]] | None = None, positive: bool = False,
            save: bool = True, compare: bool = True, guard: str | None = None, engine: str | None = None,
            off: Any = _NOT_OFF):
    """Declares one setting of a config section (a dataclass field) and its flag.

    Args:
      default: the default value (also the flag's).
      help: the flag's help text.
      flag: the flag's name, if not the field's.
      choices: the allowed values (checked when the config is built, shown in help).
      rule: (text, predicate): a value that fails the predicate raises
        "--flag=value must be <text>". None values skip the check.
      positive: shorthand for rule ("positive", v > 0).
      save: False for settings of one invocation (not written to the model_dir).
      compare: False for settings a rerun may change silently (model_dir itself).
      guard: LOCKED or LOCKED_IF_DETERMINISTIC: a rerun may not change it.
      engine: the engine option this setting is, "group.field": a field of
        engine.options' CheckpointOptions ("checkpoint"), GuardOptions ("guard")
        or KernelOptions ("kernels"), or a Trainer keyword ("trainer.<name>").
      off: the setting's value that means the engine's None (e.g. 0 for "off",
        -1 for "no limit"); any other value passes as it is.
    """
    if positive:
        rule = ("positive", lambda v: v > 0)
    return dataclasses.field(default=default, metadata={
        "help": help, "flag": flag, "choices": tuple(choices) if choices is not None else None, "rule": rule,
        "save": save, "compare": compare, "guard": guard, "engine": engine, "off": off})


def show_value(value) -> str:
    """A setting as a flag value: 0.1, 30,45, a string as is."""
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, (tuple, list)):
        return ",".join(show_value(v) for v in value)
    return str(value)


class Section:
    """Base of the config sections: checks each field's declared rule and choices."""

    title: typing.ClassVar[str] = ""

    def __post_init__(self):
        for field in dataclasses.fields(self):
            value, meta = getattr(self, field.name), field.metadata
            name = meta.get("flag") or field.name
            if value is None:
                continue
            if meta.get("choices") and value not in meta["choices"]:
                raise UserError(f"--{name}={value!r} is not known; choose one of {', '.join(meta['choices'])}")
            if meta.get("rule") and not meta["rule"][1](value):
                raise UserError(f"--{name}={show_value(value)} must be {meta['rule'][0]}")
        self.check()

    def check(self) -> None:
        """Rules between the section's fields (ValueError naming the flags)."""


def _in(lo, hi, lo_open=False, hi_open=True):
    text = f"in {'(' if lo_open else '['}{lo:g}, {hi:g}{')' if hi_open else ']'}"
    return text, lambda v: (lo < v if lo_open else lo <= v) and (v < hi if hi_open else v <= hi)


NON_NEGATIVE = ("0 or more", lambda v: v >= 0)
OFF_OR_POSITIVE = ("0 (off) or positive", lambda v: v >= 0)


def flag_name(field: dataclasses.Field) -> str:
    return field.metadata.get("flag") or field.name


# The engine's option groups that settings reach, by the name `engine=` uses.
OPTION_GROUPS: dict[str, type] = {"checkpoint": CheckpointOptions, "guard": GuardOptions, "kernels": KernelOptions}


def engine_options(sections: Iterable[Section]) -> dict[str, Any]:
    """The Trainer's keywords from the settings that declare `engine=`: option groups built, the rest as is.

    Args:
      sections: config sections (dataclass instances built with `setting` fields).

    Returns:
      {"checkpoint": CheckpointOptions, "guard": GuardOptions, "kernels": KernelOptions,
       <trainer keyword>: value, ...}, each value converted by the setting's `off`.

    Raises:
      UserError: if an option group refuses the values (its message names the option).
    """
    groups: dict[str, dict[str, Any]] = {name: {} for name in OPTION_GROUPS}
    direct: dict[str, Any] = {}
    for section in sections:
        for field in dataclasses.fields(section):
            target = field.metadata.get("engine")
            if not target:
                continue
            value = getattr(section, field.name)
            if field.metadata["off"] is not _NOT_OFF and value == field.metadata["off"]:
                value = None
            group, name = target.split(".", 1)
            (direct if group == "trainer" else groups[group])[name] = value
    try:
        built = {name: OPTION_GROUPS[name](**values) for name, values in groups.items()}
    except ValueError as e:
        raise UserError(str(e)) from None
    return {**built, **direct}


def fields_of(cls) -> list[tuple[dataclasses.Field, Any]]:
    """(field, resolved type) of a section or task-options dataclass, in declaration order."""
    hints = typing.get_type_hints(cls)
    return [(f, hints[f.name]) for f in dataclasses.fields(cls) if f.init]


def _parse(flag: str, kind, raw):
    """Converts a flag's parsed value (absl list flags give strings) to the field's type."""
    if typing.get_origin(kind) is tuple:
        raw = raw or ()  # An empty list flag reads None.
        element = typing.get_args(kind)[0]
        out = []
        for v in raw:
            try:
                out.append(element(v) if element is not int else int(str(v)))
            except (TypeError, ValueError):
                noun = "an integer" if element is int else "a number"
                raise UserError(f"--{flag}: {v!r} is not {noun}") from None
        return tuple(out)
    return raw


def flag_argument(name: str, value) -> str:
    """The command-line form of a setting: --name=value, --name / --noname for booleans."""
    if isinstance(value, bool):
        return f"--{name}" if value else f"--no{name}"
    return f"--{name}={show_value(value)}"


def check_writable_folder(path: str) -> None:
    """Checks that `path` is, or can be made, a folder this process can write in; creates nothing.

    Raises:
      ValueError: naming --model_dir and the cause (a file, a special file
        system such as /proc, no permission).
    """
    path = os.path.abspath(os.path.expanduser(path))
    if os.path.exists(path) and not os.path.isdir(path):
        raise UserError(f"--model_dir={path} is a file, not a folder")
    parent = path
    while not os.path.exists(parent):
        parent = os.path.dirname(parent)
    if not os.path.isdir(parent):
        raise UserError(f"--model_dir={path}: {parent} is a file, not a folder")
    try:  # A probe, removed at once: os.access says yes to root even on /proc and /sys.
        os.rmdir(tempfile.mkdtemp(prefix=".write-probe-", dir=parent))
    except OSError as e:
        raise UserError(f"--model_dir={path}: cannot create or write a folder in {parent} "
                         f"({e.strerror or e})") from None


def parse_floats(flag: str, values) -> tuple[float, ...]:
    """Parses a list flag of floats.

    Raises:
      ValueError: naming the flag and the value that is not a number.
    """
    return _parse(flag, tuple[float, ...], values or ())
