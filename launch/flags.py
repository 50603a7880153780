"""launch.train's flags, generated from launch.config's sections (nothing is typed twice).

Each field of a config section (and of each task's options dataclass) becomes
one absl flag of the same name, type, default and help. `print_help` lists them
by group for --help/--helpshort; absl's own --helpfull adds absl's flags.
Library modules never import absl.flags: a main turns the flags into a
validated launch.config.TrainConfig and passes that down.
"""

from __future__ import annotations

import dataclasses
import shutil
import sys
import textwrap
import types
import typing

from absl import flags

from launch import config as config_lib
from launch import tasks
from engine.errors import UserError

FLAGS = flags.FLAGS


def _kind(annotation):
    """(base type, is a list) of a field's annotation.

    float | None -> (float, False); tuple[int, ...] -> (int, True).
    """
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        annotation = next(a for a in typing.get_args(annotation) if a is not type(None))
    if typing.get_origin(annotation) is tuple:
        return typing.get_args(annotation)[0], True
    return annotation, False


def _define(field: dataclasses.Field, annotation, group: str) -> None:
    name = config_lib.flag_name(field)
    help_text = field.metadata.get("help", "")
    if field.metadata.get("choices"):
        help_text += f" One of: {', '.join(field.metadata['choices'])}."
    base, is_list = _kind(annotation)
    default = field.default
    module = f"launch.train [{group}]"  # --helpfull groups flags by this name.
    if is_list:
        flags.DEFINE_list(name, [str(v) for v in default] or None, help_text, module_name=module)
    elif base is bool:
        flags.DEFINE_bool(name, default, help_text, module_name=module)
    elif base is int:
        flags.DEFINE_integer(name, default, help_text, module_name=module)
    elif base is float:
        flags.DEFINE_float(name, default, help_text, module_name=module)
    else:
        flags.DEFINE_string(name, default, help_text, module_name=module)


def groups() -> list[tuple[str, list[tuple[dataclasses.Field, object]]]]:
    """(group title, [(field, annotation)]) for every section, then each task's options."""
    out = [(cls.title, config_lib.fields_of(cls)) for cls in config_lib.SECTIONS.values()]
    for name in tasks.names():
        options = tasks.get(name).options_class
        if options is not None:
            out.append((f"task {name}", config_lib.fields_of(options)))
    return out


TASK_HELP = "What to train: each task is one file in launch/tasks/ with its data, model, loss, metrics and flags."


def define_train_flags() -> None:
    """Defines the flags of launch.train, once per process."""
    flags.DEFINE_string("task", "classification", TASK_HELP + f" One of: {', '.join(tasks.names())}.",
                        module_name="launch.train [task]")
    seen: dict[str, str] = {}
    for title, fields in groups():
        for field, annotation in fields:
            name = config_lib.flag_name(field)
            if name in seen:
                raise UserError(f"flag --{name} is defined by both {seen[name]} and {title}")
            seen[name] = title
            _define(field, annotation, title)


def config_from_flags() -> config_lib.TrainConfig:
    """The validated TrainConfig from the parsed flags.

    Raises:
      ValueError: naming the flag of the first bad value.
    """
    task = tasks.get(FLAGS.task)
    return config_lib.TrainConfig.from_flag_values(FLAGS, task.options_class)


HELP_ARGS = ("--help", "-help", "-h", "-?", "--helpshort", "-helpshort")


def print_help(doc: str, out=sys.stdout) -> None:
    """Prints `doc` and the project's flags by group (name, default, help), for --help and --helpshort."""
    width = min(shutil.get_terminal_size((100, 24)).columns, 100)
    out.write(doc.strip() + "\n\nFlags by group (absl's own flags: --helpfull):\n")
    entries = [("task", [(None, "task", "classification", TASK_HELP + f" One of: {', '.join(tasks.names())}.")])]
    for title, fields in groups():
        entries.append((title, [(f, config_lib.flag_name(f), f.default, FLAGS[config_lib.flag_name(f)].help)
                                for f, _ in fields]))
    for title, rows in entries:
        out.write(f"\n{title}:\n")
        for _, name, default, help_text in rows:
            shown = "unset" if default is None or default == () else \
                str(default).lower() if isinstance(default, bool) else config_lib.show_value(default)
            out.write(f"  --{name}  (default: {shown})\n")
            out.write(textwrap.fill(help_text, width, initial_indent="      ", subsequent_indent="      ") + "\n")
