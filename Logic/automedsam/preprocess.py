"""Intensity normalisation and LiteMedSAM's slice resizing: the one path shared by training and inference.

Order (DESIGN §3): `normalize_volume` (whole canonical volume -> float32 0..255: CT window, MR percentiles)
-> `to_model_input` (a batch of slices -> longest side to `image_size`, per-slice min-max to [0, 1], zero
padding bottom/right, 3 channels) -> model -> `from_model_output` (crop the padding, resize back to the slice).
Slices are canonical `[s, r, c]` (rows anterior -> posterior, columns patient right -> left); boxes given to the
model are `[x0, y0, x1, y1]` with x along columns, as LiteMedSAM and SAM expect.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields

import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812 (the conventional alias)

from .errors import InputError, ModelError
from .volume import MODALITIES


@dataclass(frozen=True)
class PreprocessConfig:
    """Preprocessing settings; stored in every checkpoint so that inference repeats training's preprocessing.

    `image_size`: side of the square model input in pixels (256 for LiteMedSAM, 1024 for MedSAM ViT-B).
    `ct_window`: (level, width) in HU, applied to CT. `mr_percentiles`: (low, high) percentiles of the MR
    volume's positive voxels mapped to 0 and 255.
    """

    image_size: int = 256
    ct_window: tuple[float, float] = (40.0, 400.0)
    mr_percentiles: tuple[float, float] = (0.5, 99.5)

    def __post_init__(self) -> None:
        """Normalise lists (from JSON or a checkpoint) to tuples and refuse settings that cannot work."""
        object.__setattr__(self, "ct_window", tuple(float(v) for v in self.ct_window))
        object.__setattr__(self, "mr_percentiles", tuple(float(v) for v in self.mr_percentiles))
        if int(self.image_size) != self.image_size or self.image_size < 16:
            raise InputError(f"image_size {self.image_size} must be a whole number of pixels, at least 16")
        object.__setattr__(self, "image_size", int(self.image_size))
        window = self.ct_window
        if len(window) != 2 or not np.all(np.isfinite(window)) or not window[1] > 0:
            raise InputError(f"CT window {window} must be (level, width) in HU with a positive width")
        percentiles = self.mr_percentiles
        if len(percentiles) != 2 or not 0.0 <= percentiles[0] < percentiles[1] <= 100.0:
            raise InputError(f"MR percentiles {percentiles} must be (low, high) with 0 <= low < high <= 100")

    @property
    def ct_range(self) -> tuple[float, float]:
        """(lowest, highest) HU of the CT window; values outside are clipped."""
        level, width = self.ct_window
        return level - width / 2.0, level + width / 2.0

    def to_dict(self) -> dict[str, object]:
        """Plain dict (ints, floats, lists) for a checkpoint or JSON."""
        return {key: list(value) if isinstance(value, tuple) else value for key, value in asdict(self).items()}

    @classmethod
    def from_dict(cls, data: Mapping[str, object]) -> PreprocessConfig:
        """Inverse of `to_dict`; keys left out take their defaults, unknown keys raise `ModelError`."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ModelError(f"the preprocessing settings name unknown keys {unknown} (known: {sorted(known)}); "
                             "the checkpoint was probably written by a newer AutoMedSAM, update it")
        try:
            return cls(**data)  # type: ignore[arg-type]
        except (InputError, TypeError, ValueError) as error:
            raise ModelError(f"the checkpoint's preprocessing settings are invalid: {error}") from error


def normalize_volume(array_src: np.ndarray, modality: str, config: PreprocessConfig | None = None) -> np.ndarray:
    """Float32 copy of a whole volume scaled to 0..255, with bounds computed once for the volume (not per slice).

    CT: clip to the HU window, scale. MR: clip to the `mr_percentiles` of the positive voxels (all voxels if
    none is positive), scale; background 0 stays 0, as in MedSAM's MR preprocessing. Any array shape works.
    """
    config = config or PreprocessConfig()
    name = str(modality).upper()
    if name not in MODALITIES:
        raise InputError(f"unknown modality {modality!r}; expected one of {', '.join(MODALITIES)}")
    values = np.array(array_src, dtype=np.float32)  # always a copy; clipped and scaled in place below
    if values.size == 0:
        raise InputError("the volume is empty; there is nothing to normalise")
    low, high = config.ct_range if name == "CT" else _mr_range(values, config.mr_percentiles)
    if not high > low:
        values[...] = 0.0
        return values
    np.clip(values, low, high, out=values)
    values -= np.float32(low)
    values *= np.float32(255.0 / (high - low))
    np.clip(values, 0.0, 255.0, out=values)  # float32 rounding may overshoot 255 by an ulp
    return values


def _mr_range(values: np.ndarray, percentiles: tuple[float, float]) -> tuple[float, float]:
    """MR intensity bounds: percentiles of the positive voxels, widened to their min..max if they coincide."""
    positive = values[values > 0]
    considered = positive if positive.size else values.ravel()
    low, high = (float(v) for v in np.percentile(considered, percentiles))
    if high <= low:
        low, high = float(considered.min()), float(considered.max())
    return low, high


@dataclass(frozen=True)
class ResizeInfo:
    """Geometry of one `to_model_input` batch: slice size (R, C), resized size (r, c), padded square side S."""

    original_size: tuple[int, int]
    resized_size: tuple[int, int]
    image_size: int

    @classmethod
    def for_slices(cls, rows: int, cols: int, image_size: int = 256) -> ResizeInfo:
        """Longest side to `image_size`, aspect kept, rounded as LiteMedSAM rounds (`int(x + 0.5)`)."""
        if rows < 1 or cols < 1 or image_size < 1:
            raise InputError(f"slices of {rows}x{cols} pixels cannot be resized to {image_size} pixels")
        scale = image_size / max(rows, cols)
        resized = (max(1, int(rows * scale + 0.5)), max(1, int(cols * scale + 0.5)))
        return cls((int(rows), int(cols)), resized, int(image_size))


def to_model_input(slices: np.ndarray | torch.Tensor, image_size: int = 256) -> tuple[torch.Tensor, ResizeInfo]:
    """LiteMedSAM's image preprocessing for a batch of canonical slices (N, R, C), values 0..255.

    Returns (N, 3, S, S) float32 in [0, 1] on the input's device (CPU for numpy): each slice resized so its
    longest side is S (bilinear, antialiased when shrinking, as LiteMedSAM's area resize), min-max scaled to
    [0, 1] on its own (a constant slice gives zeros), padded with zeros at the bottom and right, repeated to
    3 channels. `ResizeInfo` carries what `from_model_output` and `box_to_model` need.
    """
    if isinstance(slices, torch.Tensor):
        tensor = slices.to(torch.float32)
    else:
        tensor = torch.from_numpy(np.ascontiguousarray(slices, dtype=np.float32))
    if tensor.ndim != 3 or 0 in tensor.shape:
        raise InputError(f"expected a non-empty batch of slices (N, rows, cols); got shape {tuple(tensor.shape)}")
    info = ResizeInfo.for_slices(tensor.shape[1], tensor.shape[2], image_size)
    images = tensor[:, None]
    if info.resized_size != info.original_size:
        images = F.interpolate(images, size=info.resized_size, mode="bilinear", align_corners=False, antialias=True)
    low = images.amin(dim=(2, 3), keepdim=True)
    high = images.amax(dim=(2, 3), keepdim=True)
    images = (images - low) / (high - low).clamp_min(1e-8)
    pad_rows, pad_cols = image_size - info.resized_size[0], image_size - info.resized_size[1]
    images = F.pad(images, (0, pad_cols, 0, pad_rows), value=0.0)
    return images.repeat(1, 3, 1, 1), info


def from_model_output(logits: torch.Tensor, info: ResizeInfo) -> torch.Tensor:
    """Per-slice maps (N, K, R, C) from model outputs (N, K, s, s) on the padded square: the inverse geometry.

    Outputs smaller than S (SAM's 256 px masks of a 1024 px model) are first resized to S x S, as SAM's
    `postprocess_masks` does; then the padding is cropped and the rest resized bilinearly (no align_corners)
    to the slice size. Works on logits or probabilities; non-float input is converted to float32.
    """
    if logits.ndim != 4 or logits.shape[-1] != logits.shape[-2]:
        raise InputError(f"expected square model outputs (N, K, s, s); got shape {tuple(logits.shape)}")
    maps = logits if logits.is_floating_point() else logits.to(torch.float32)
    side = info.image_size
    if maps.shape[-1] != side:
        maps = F.interpolate(maps, size=(side, side), mode="bilinear", align_corners=False)
    maps = maps[..., : info.resized_size[0], : info.resized_size[1]]
    if info.resized_size == info.original_size:
        return maps.contiguous()
    return F.interpolate(maps, size=info.original_size, mode="bilinear", align_corners=False)


def box_to_model(box_rc: tuple[int, int, int, int] | np.ndarray, info: ResizeInfo) -> np.ndarray:
    """A slice box `(r0, c0, r1, c1)` (inclusive pixel indices) as LiteMedSAM's box prompt `[x0, y0, x1, y1]`.

    Coordinates are scaled into model-input pixels (x = column), float32; arrays of boxes (..., 4) work too.
    """
    box = np.asarray(box_rc, dtype=np.float64)
    if box.shape[-1:] != (4,):
        raise InputError(f"a box is (row0, col0, row1, col1); got shape {box.shape}")
    rows, cols = info.original_size
    r0, c0, r1, c1 = np.moveaxis(box, -1, 0)
    if np.any(r0 > r1) or np.any(c0 > c1) or np.any(np.minimum(r0, c0) < 0) or np.any(r1 > rows - 1) \
            or np.any(c1 > cols - 1):
        raise InputError(f"box {box.tolist()} is not an ordered (row0, col0, row1, col1) box inside a "
                         f"{rows}x{cols} slice")
    row_scale = info.resized_size[0] / rows
    col_scale = info.resized_size[1] / cols
    return np.stack([c0 * col_scale, r0 * row_scale, c1 * col_scale, r1 * row_scale], axis=-1).astype(np.float32)


def mask_box(mask2d: np.ndarray) -> tuple[int, int, int, int] | None:
    """Tight inclusive box `(r0, c0, r1, c1)` of a 2D mask's nonzero pixels; None when the mask is empty."""
    mask = np.asarray(mask2d)
    if mask.ndim != 2:
        raise InputError(f"expected a 2D mask; got shape {mask.shape}")
    rows = np.flatnonzero(mask.any(axis=1))
    if rows.size == 0:
        return None
    cols = np.flatnonzero(mask.any(axis=0))
    return int(rows[0]), int(cols[0]), int(rows[-1]), int(cols[-1])
