"""Class subsets and labels-per-class limits: which examples a run keeps.

The transfer tutorial's question (does a pretrained backbone pay when labels are
few?) needs runs on some classes only, with N labelled images per class. This
module chooses the examples; `launch.tasks.classification` applies the choice to
CIFAR-10 from --data_dir and to any --train_data/--eval_data source
(`--classes`, `--labels_per_class`).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from engine.errors import UserError


def select(labels: np.ndarray, classes: Sequence[int] | None = None, per_class: int | None = None, *,
           seed: int = 0, what: str = "the training data") -> tuple[np.ndarray, np.ndarray]:
    """The examples to keep, and their labels renumbered 0..len(classes)-1.

    Args:
      labels: int [N], class ids of the source.
      classes: class ids to keep, in the order that gives them their new ids
        (classes[i] becomes class i); None keeps every class, ids unchanged.
      per_class: keep this many examples of each kept class, drawn without
        replacement by `seed`; None keeps all.
      seed: seed of the draw. The draw of one class does not depend on the other
        classes kept, so --classes=5,6 and --classes=5,6,7 draw the same images of 5.
      what: names the data in errors (e.g. "--train_data=train.csv").

    Returns:
      (keep, new_labels): int64 [M] positions in source order, int32 [M].

    Raises:
      UserError: a class id that is not in `labels`' range, a class listed twice,
        or a class with fewer than `per_class` examples (named with its count).
    """
    labels = np.asarray(labels)
    present = int(labels.max()) + 1 if len(labels) else 0
    if classes is None:
        classes = list(range(present))
        renumber = False
    else:
        classes = [int(c) for c in classes]
        renumber = True
        if len(set(classes)) != len(classes):
            raise UserError(f"--classes={','.join(map(str, classes))} lists a class twice")
        bad = [c for c in classes if not 0 <= c < present]
        if bad:
            raise UserError(f"--classes: {what} has class ids 0..{present - 1}, not {bad[0]}")
    if per_class is not None and per_class < 1:
        raise UserError(f"--labels_per_class={per_class} must be at least 1")
    keep = []
    for c in classes:
        idx = np.flatnonzero(labels == c)
        if per_class is not None:
            if len(idx) < per_class:
                raise UserError(f"--labels_per_class={per_class}: {what} has only {len(idx)} examples of class {c}")
            rng = np.random.default_rng([seed, c])
            idx = np.sort(rng.choice(idx, per_class, replace=False))
        keep.append(idx)
    keep = np.sort(np.concatenate(keep)) if keep else np.zeros([0], np.int64)
    new_labels = labels[keep].astype(np.int32)
    if renumber:
        lookup = np.full(present, -1, np.int32)
        lookup[classes] = np.arange(len(classes), dtype=np.int32)
        new_labels = lookup[new_labels]
    return keep.astype(np.int64), new_labels
