"""Small file helpers the engine shares: one atomic write, one rule for "better"."""

from __future__ import annotations

import math
import os

from engine.errors import UserError


def write_atomic(path: str, text: str) -> None:
    """Replaces `path` with `text` so that a crash leaves the old file or the new one, never a part.

    Writes `path`.tmp, flushes and fsyncs it, then os.replace()s it over `path`.

    Raises:
      OSError: if the folder cannot be written (disk full, no permission); `path`
        is then unchanged.
    """
    tmp = path + ".tmp"
    try:
        with open(tmp, "w", newline="") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError:
        try:
            os.remove(tmp)
        except OSError:
            pass
        raise


def mode_for(metric: str, mode: str | None = None) -> str:
    """"min" or "max" for `metric`: `mode` if given, else "min" for losses and errors, else "max".

    Lower is better for names ending in loss, error, mae or mse (eval_loss,
    eval_g_loss, eval_mae); higher for the rest (eval_accuracy).

    Raises:
      ValueError: if mode is not None, "min" or "max".
    """
    mode = mode or ("min" if metric.endswith(("loss", "error", "mae", "mse")) else "max")
    if mode not in ("min", "max"):
        raise UserError(f"mode {mode!r} for {metric!r} must be 'max' or 'min'")
    return mode


def is_better(mode: str, value: float, best: float | None, min_delta: float = 0.0) -> bool:
    """Whether `value` beats `best` by more than `min_delta` in direction `mode`.

    NaN and infinities never do; anything finite beats None (no best yet).
    """
    if not math.isfinite(value):
        return False
    if best is None:
        return True
    return value < best - min_delta if mode == "min" else value > best + min_delta
