"""The engine's output: a label map on the input volume's grid plus what each label value means."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .catalog import OrganClass
from .volume import Volume


def label_dtype(max_label_value: int) -> type:
    """uint8 when every label value fits (Slicer and NIfTI readers expect it), else uint16 (up to 65535)."""
    return np.uint8 if max_label_value <= 255 else np.uint16

@dataclass(frozen=True)
class Segment:
    """One output segment: its label value and the catalog class that names, colours and codes it.

    In box mode the user may name a segment freely; `organ` is then a catalog class built for that name
    (generic "Tissue" terminology) and `key` is the name as typed.
    """

    key: str
    label_value: int
    organ: OrganClass

    @property
    def name(self) -> str:
        """Display name (segment name in Slicer and in `.seg.nrrd`)."""
        return self.organ.name

    @property
    def color(self) -> tuple[int, int, int]:
        """RGB colour, 0..255."""
        return self.organ.color


@dataclass
class LabelVolume:
    """Labels (KJI, uint8 or uint16, 0 = background) on the grid of `volume`, one `Segment` per label value.

    `probabilities` (optional, float32 KJI per segment) and `uncertainty` (optional, float32 KJI) are on
    the same grid. `presence[key]` holds the per-slice presence score (0..1, canonical slice order) of
    each class-prompted segment.
    """

    labels: np.ndarray
    volume: Volume
    segments: tuple[Segment, ...]
    uncertainty: np.ndarray | None = None
    presence: dict[str, np.ndarray] = field(default_factory=dict)
    messages: list[str] = field(default_factory=list)

    @property
    def ijk_to_ras(self) -> np.ndarray:
        """IJK->RAS matrix (4x4, mm) of the label grid, equal to the input volume's."""
        return self.volume.ijk_to_ras

    def mask(self, key: str) -> np.ndarray:
        """Boolean KJI mask of the segment with this key."""
        for segment in self.segments:
            if segment.key == key:
                return self.labels == segment.label_value
        raise KeyError(f"no segment {key!r}; segments are {[s.key for s in self.segments]}")
