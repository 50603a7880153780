"""A per-epoch tqdm progress bar fed with the loop's metrics."""

from __future__ import annotations

import sys

import tqdm


class EpochProgress:
    """Progress of one epoch in steps, showing loss, accuracy, learning rate, examples/s.

    Args:
      epoch: 0-based epoch index (shown 1-based).
      num_epochs: epochs in the run, for the label (may be fractional when the run
        ends mid-epoch; shown rounded up).
      total_steps: steps of this epoch that this run will do, counted from its start.
      initial_step: steps of this epoch already done (a resumed run).
      enabled: False silences the bar (tests, non-chief workers).
    """

    def __init__(self, *, epoch: int, num_epochs: int, total_steps: int, initial_step: int, enabled: bool):
        self._bar = tqdm.tqdm(
            total=total_steps, initial=initial_step, desc=f"epoch {epoch + 1}/{num_epochs}",
            unit="step", dynamic_ncols=True, disable=not enabled, file=sys.stderr, leave=True)

    def update(self, steps: int, logs: dict[str, float]) -> None:
        """Advances by `steps` and shows `logs` (names to floats) beside the bar."""
        self._bar.set_postfix({k: format_value(v) for k, v in logs.items()}, refresh=False)
        self._bar.update(steps)

    @staticmethod
    def write(line: str) -> None:
        """Prints a line above any open bar."""
        tqdm.tqdm.write(line, file=sys.stderr)

    def close(self) -> None:
        self._bar.close()


def format_value(value: float) -> str:
    """Four significant digits, or a whole number from 100 on (examples/s)."""
    return f"{value:.0f}" if abs(value) >= 100 else f"{value:.4g}"
