"""ImageIndex: labelled image files (or their encoded bytes) before decoding.

Every image source (class folders, CSV index, TFRecords) produces one; the
pipelines in datasets.images read it. It lives apart from datasets.sources so
that datasets.tfrecord, which sources reads through, need not import sources.
"""

from __future__ import annotations

import dataclasses
from typing import Protocol, Sequence

import numpy as np

from engine.errors import UserError


class Records(Protocol):
    """What an index needs of streamed records (datasets.tfrecord.RecordTable has it).

    A protocol rather than an import: tfrecord imports this module, not the reverse.
    """

    offset: np.ndarray  # int64 [N], each record's byte offset in its file

    def subset(self, keep: np.ndarray) -> "Records":
        """The records at the indices `keep` (int [M])."""


@dataclasses.dataclass(frozen=True)
class ImageIndex:
    """Labelled image files (or their encoded bytes), before decoding.

    Attributes:
      paths: N image file paths; for TFRecord sources, the paths the records were
        written from (for messages only).
      labels: int32 [N] class ids in [0, num_classes).
      class_names: one name per class id.
      origins: N strings naming where each example was listed, e.g.
        "train.csv:12" or the TFRecord shard and record number.
      encoded: N encoded images (bytes) when already in memory (TFRecord), or None
        to read `paths` (or `records`).
      records: for TFRecords streamed from disk, a datasets.tfrecord.RecordTable
        saying where each example's record lies; None otherwise.
    """

    paths: Sequence[str]
    labels: np.ndarray
    class_names: tuple[str, ...]
    origins: Sequence[str]
    encoded: Sequence[bytes] | None = None
    records: Records | None = None

    def __post_init__(self):
        if not len(self.paths) == len(self.labels) == len(self.origins):
            raise UserError(f"{len(self.paths)} paths, {len(self.labels)} labels and {len(self.origins)} origins")
        if self.encoded is not None and len(self.encoded) != len(self.paths):
            raise UserError(f"{len(self.encoded)} encoded images for {len(self.paths)} paths")
        if self.records is not None and len(self.records.offset) != len(self.paths):
            raise UserError(f"{len(self.records.offset)} records for {len(self.paths)} paths")

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def __len__(self) -> int:
        return len(self.labels)

    def describe(self, i: int) -> str:
        """'<path> (<origin>)' of example i, for messages."""
        origin = self.origins[i]
        return f"{self.paths[i]} ({origin})" if origin and origin != self.paths[i] else str(self.paths[i])

    def subset(self, keep: np.ndarray) -> "ImageIndex":
        """The examples at positions `keep` (int [M]), in that order."""
        keep = np.asarray(keep, dtype=np.int64)
        return ImageIndex([self.paths[i] for i in keep], self.labels[keep], self.class_names,
                          [self.origins[i] for i in keep],
                          None if self.encoded is None else [self.encoded[i] for i in keep],
                          None if self.records is None else self.records.subset(keep))
