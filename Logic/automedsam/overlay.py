"""Overlay PNGs of representative slices: what a user looks at first to judge a result."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .result import LabelVolume
from .volume import canonical_view


def representative_slices(labels_src: np.ndarray, count: int = 4) -> list[int]:
    """Canonical slice indices spread over the labelled range, favouring slices with many labelled voxels."""
    per_slice = (labels_src > 0).reshape(labels_src.shape[0], -1).sum(axis=1)
    labelled = np.flatnonzero(per_slice)
    if labelled.size == 0:
        return list(np.linspace(0, labels_src.shape[0] - 1, num=min(count, labels_src.shape[0]), dtype=int))
    chunks = np.array_split(labelled, min(count, labelled.size))
    return [int(chunk[np.argmax(per_slice[chunk])]) for chunk in chunks]


def _display_window(result: LabelVolume) -> tuple[float, float]:
    """Lower and upper display values: a soft-tissue window for CT, 1-99 percentiles for MR."""
    if result.volume.modality == "CT":
        return -160.0, 240.0
    low, high = np.percentile(result.volume.array, [1, 99])
    return float(low), float(high)


def write_overlay_png(result: LabelVolume, path: Path, count: int = 4, title: str | None = None) -> Path:
    """Axial slices (anterior up, patient right on image left) with each segment's colour and a legend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    view = canonical_view(result.volume)
    image_src, labels_src = view.apply(result.volume.array), view.apply(result.labels)
    slices = representative_slices(labels_src, count)
    row_mm, col_mm = view.pixel_spacing[1], view.pixel_spacing[2]
    low, high = _display_window(result)
    figure, axes = plt.subplots(1, len(slices), figsize=(3.2 * len(slices), 3.6), squeeze=False)
    for axis, s in zip(axes[0], slices, strict=True):
        axis.imshow(image_src[s], cmap="gray", vmin=low, vmax=high, aspect=row_mm / col_mm, interpolation="nearest")
        rgba = np.zeros(labels_src.shape[1:] + (4,), dtype=float)
        for segment in result.segments:
            rgba[labels_src[s] == segment.label_value] = (*np.asarray(segment.color) / 255.0, 0.5)
        axis.imshow(rgba, aspect=row_mm / col_mm, interpolation="nearest")
        axis.set_title(f"slice {s + 1}/{labels_src.shape[0]}", fontsize=9)
        axis.axis("off")
    handles = [Patch(color=np.asarray(seg.color) / 255.0, label=seg.name) for seg in result.segments]
    figure.legend(handles=handles, loc="lower center", ncol=min(6, max(1, len(handles))), fontsize=8, frameon=False)
    if title:
        figure.suptitle(title, fontsize=10)
    figure.tight_layout(rect=(0, 0.1, 1, 0.95))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path
