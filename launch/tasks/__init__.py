"""Tasks: everything task-specific about a run, one file each (TF Model Garden's `Task`).

A task module in this package defines `TASK`, a `launch.tasks.base.Task`: its
data, model, Trainer (subclass), metrics and flags. `launch.train --task=NAME`
picks one; every module here is found by name, so a new task is one new file.
"""

from __future__ import annotations

import importlib
import pkgutil

from launch.tasks.base import Task, TaskData
from engine.errors import UserError

_SKIP = {"base"}


def names() -> list[str]:
    """The task names: the modules of this package (base aside), sorted."""
    return sorted(m.name for m in pkgutil.iter_modules(__path__) if m.name not in _SKIP and not m.name.startswith("_"))


def get(name: str) -> Task:
    """The task called `name`.

    Raises:
      ValueError: naming the flag and the known tasks if there is none.
    """
    if name not in names():
        raise UserError(f"--task={name!r} is not a known task; choose one of {', '.join(names())}")
    return importlib.import_module(f"launch.tasks.{name}").TASK


def define_flags() -> None:
    """Defines every task's own flags (absl), each under its task's name."""
    for name in names():
        get(name).define_flags()


__all__ = ["Task", "TaskData", "names", "get", "define_flags"]
