"""A run's resolved configuration, saved in its model_dir: config.flags (a flagfile) and config.json.

`python -m launch.train --flagfile=<model_dir>/config.flags` reruns (resumes) the
job; a rerun compares its config with config.json (`compare`).
"""

from __future__ import annotations

import json
import os
from typing import Any

from engine.files import write_atomic
from launch.config import TrainConfig, flag_argument
from launch.settings import LOCKED, LOCKED_IF_DETERMINISTIC, show_value
from engine.errors import UserError

CONFIG_FLAGS, CONFIG_JSON = "config.flags", "config.json"


def write_saved_config(config: TrainConfig, command: str = "python -m launch.train") -> None:
    """Writes <model_dir>/config.flags (a flagfile that reruns the job) and config.json.

    Settings that are None (unset) are left out of the flagfile: their flags'
    defaults are None.
    """
    folder = config.run.model_dir
    lines = ["# The resolved configuration of the run in this folder, saved by launch.train.",
             f"# Rerun (resume) it with:  {command} --flagfile={os.path.join(folder, CONFIG_FLAGS)}"]
    group = None
    for title, name, field, value in config.settings():
        if field is not None and not field.metadata.get("save", True):
            continue
        if title != group:
            lines.append(f"# {title}")
            group = title
        if value is None:
            continue
        lines.append(flag_argument(name, value))
    write_atomic(os.path.join(folder, CONFIG_FLAGS), "\n".join(lines) + "\n")
    write_atomic(os.path.join(folder, CONFIG_JSON), json.dumps(config.saved_flags(), indent=1) + "\n")


def read_saved_config(model_dir: str) -> dict[str, Any] | None:
    """The settings saved by an earlier run in `model_dir` (config.json), or None if there are none."""
    path = os.path.join(model_dir, CONFIG_JSON)
    if not os.path.isfile(path):
        return None
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError) as e:
        raise UserError(f"{path} is unreadable ({e}); move it away to start the run's config afresh") from None


def compare(config: TrainConfig, saved: dict[str, Any]) -> list[str]:
    """What differs from `saved` (config.json's saved_flags() of an earlier run), as lines '--flag: old -> new'.

    Raises:
      ValueError: if a guarded setting differs (model, batch size, optimizer;
        data order under --deterministic) and --allow_config_change is not set.
    """
    changes, refused = [], []
    deterministic = bool(saved.get("deterministic")) or config.run.deterministic
    for _, name, field, value in config.settings():
        if name not in saved or (field is not None and not field.metadata.get("compare", True)):
            continue
        old = tuple(saved[name]) if isinstance(saved[name], list) else saved[name]
        if old == value:
            continue
        changes.append(f"--{name}: {show_value(old) if old is not None else 'unset'} -> "
                       f"{show_value(value) if value is not None else 'unset'}")
        guard = field.metadata.get("guard") if field is not None else LOCKED
        if guard == LOCKED or (guard == LOCKED_IF_DETERMINISTIC and deterministic):
            refused.append((guard, changes[-1]))
    if refused and not config.command.allow_config_change:
        why = "the checkpoint's model, batch or optimizer" if any(g == LOCKED for g, _ in refused) \
            else "a --deterministic run's data order"
        refused = [change for _, change in refused]
        raise UserError(f"--model_dir={config.run.model_dir} holds a run with other settings "
                         f"({'; '.join(refused)}): that changes {why}. Use another --model_dir, or "
                         "--allow_config_change to resume anyway")
    return changes
