"""Seeded slice augmentation: affine (rotation, zoom out/in, aspect, translation), a cut field of view, and
intensity (gamma, a random monotone curve for contrast phase and MR weighting, a bias ramp, noise).

Applied to a normalised canonical slice (values 0..255) and its label slice BEFORE the shared `to_model_input`, so an
augmented slice goes through exactly the inference preprocessing. Each augmented copy of a slice is encoded once and
cached like the original (the image encoder is frozen), so `variants` multiplies the encoder time, not the epoch
time. A linear intensity change would be undone by the per-slice min-max scaling of `to_model_input`, hence gamma.
"""

from __future__ import annotations

import zlib
from dataclasses import asdict, dataclass

import numpy as np
from scipy import ndimage

from automedsam.errors import InputError

STEP_TIME_FIELDS = ("embedding_noise",)   # drawn at each training step, not at encoding


@dataclass(frozen=True)
class AugmentConfig:
    """`variants` augmented copies per slice besides the original (0: no augmentation); ranges are +-/min-max."""

    variants: int = 0
    rotation_deg: float = 10.0              # uniform in [-r, r]
    scale: tuple[float, float] = (0.9, 1.1)
    translation: float = 0.05               # fraction of the slice size, uniform in [-t, t] per axis
    gamma: tuple[float, float] = (0.7, 1.4)
    noise_std: float = 2.0                  # Gaussian noise on the 0..255 scale
    seed: int = 0
    aspect: float = 0.0                     # rows and columns scaled apart by a factor in [1 - a, 1 + a]
    crop: float = 0.0                       # probability of cutting the field of view to a random box
    crop_max: float = 0.3                   # each side of that box cut by up to this fraction of the slice
    intensity_curve: float = 0.0            # random monotone intensity remap (contrast phase, MR weighting)
    bias_field: float = 0.0                 # multiplicative linear intensity ramp of up to +-b (MR coil bias)
    # Gaussian noise on the cached embeddings at every training step, in units of each channel's spatial standard
    # deviation (0.1 is about what bf16 encoding changes): drawn per step, so not part of the embedding store's key.
    embedding_noise: float = 0.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "scale", tuple(float(v) for v in self.scale))
        object.__setattr__(self, "gamma", tuple(float(v) for v in self.gamma))
        extras = (self.aspect, self.crop, self.crop_max, self.intensity_curve, self.bias_field,
                  self.embedding_noise)
        if (self.variants < 0 or self.rotation_deg < 0 or self.translation < 0 or self.noise_std < 0
                or min(extras) < 0 or self.aspect >= 1 or self.crop > 1 or self.crop_max >= 0.5):
            raise InputError("augmentation variants, rotation, translation, noise, aspect, crop, intensity_curve, "
                             "bias_field and embedding_noise must not be negative; aspect < 1, crop <= 1, "
                             "crop_max < 0.5")
        if not 0 < self.scale[0] <= self.scale[1] or not 0 < self.gamma[0] <= self.gamma[1]:
            raise InputError(f"augmentation scale {self.scale} and gamma {self.gamma} must be (low, high) with "
                             "0 < low <= high")

    def to_dict(self) -> dict[str, object]:
        """Plain dict (for configs and checkpoints)."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    def encoding_dict(self) -> dict[str, object]:
        """What shapes the encoded copies (the embedding store's key): all but the per-step `embedding_noise`."""
        return {k: v for k, v in self.to_dict().items() if k not in STEP_TIME_FIELDS}


def slice_rng(config: AugmentConfig, case_id: str, slice_index: int, variant: int) -> np.random.Generator:
    """The generator of one augmented copy: the same numbers for the same case, slice and variant, on any machine."""
    return np.random.default_rng([config.seed, zlib.crc32(case_id.encode()), slice_index, variant])


def augment_slice(image: np.ndarray, labels: np.ndarray, config: AugmentConfig,
                  rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Augmented copies of a 2D slice (float, 0..255) and its label slice (integers), shapes unchanged.

    The image is resampled linearly (outside: its minimum), the labels with nearest neighbour (outside: 0). A scale
    below 1 zooms out (the body gets smaller, as in a larger field of view), above 1 zooms in; a crop blanks what
    lies outside a random box (a cut field of view). The draws are made in a fixed order, so a copy is the same
    for the same seed whatever the settings that are zero.
    """
    warped, warped_labels = _warp(image, labels, config, rng)
    draws = rng.uniform(size=8)
    if draws[0] < config.crop:
        warped, warped_labels = _cut_field_of_view(warped, warped_labels, config.crop_max, draws[1:5])
    warped = _intensity(warped, config, rng)
    return np.clip(warped, 0.0, 255.0).astype(np.float32), warped_labels.astype(labels.dtype)


def _warp(image: np.ndarray, labels: np.ndarray, config: AugmentConfig,
          rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Rotation, (anisotropic) scale and shift about the slice centre."""
    rows, cols = image.shape
    angle = np.deg2rad(rng.uniform(-config.rotation_deg, config.rotation_deg))
    scale = rng.uniform(*config.scale)
    shift = rng.uniform(-config.translation, config.translation, size=2) * np.array([rows, cols])
    stretch = rng.uniform(1.0 - config.aspect, 1.0 + config.aspect)
    rotation = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]]) / scale
    rotation = rotation @ np.diag([1.0 / stretch, stretch])
    centre = (np.array([rows, cols]) - 1) / 2.0
    offset = centre - rotation @ (centre + shift)
    warped = ndimage.affine_transform(image.astype(np.float32), rotation, offset, order=1, mode="constant",
                                      cval=float(image.min()))
    warped_labels = ndimage.affine_transform(labels, rotation, offset, order=0, mode="constant", cval=0)
    return warped, warped_labels


def _cut_field_of_view(image: np.ndarray, labels: np.ndarray, most: float,
                       draws: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Blank everything outside a box whose sides are cut by `draws` (4 numbers in [0, 1)) x `most`."""
    rows, cols = image.shape
    top, bottom = int(draws[0] * most * rows), rows - int(draws[1] * most * rows)
    left, right = int(draws[2] * most * cols), cols - int(draws[3] * most * cols)
    keep = np.zeros(image.shape, dtype=bool)
    keep[top:bottom, left:right] = True
    return np.where(keep, image, image.min()), np.where(keep, labels, 0)


def _intensity(image: np.ndarray, config: AugmentConfig, rng: np.random.Generator) -> np.ndarray:
    """Gamma, a random monotone remap, a linear bias ramp and noise (a linear change alone would be undone by the
    per-slice min-max scaling of `to_model_input`)."""
    gamma = rng.uniform(*config.gamma)
    noise_seed = int(rng.integers(2**31))
    knots = np.sort(np.clip(np.linspace(0.0, 1.0, 5)[1:4] + rng.uniform(-1, 1, 3) * config.intensity_curve, 0, 1))
    ramp = rng.uniform(-1, 1, 2) * config.bias_field
    low, high = float(image.min()), float(image.max())
    if high > low:
        unit = ((image - low) / (high - low)) ** gamma
        if config.intensity_curve > 0:
            unit = np.interp(unit, [0.0, 0.25, 0.5, 0.75, 1.0], [0.0, *knots, 1.0])
        image = low + (high - low) * unit
    if config.bias_field > 0:
        rows, cols = np.meshgrid(np.linspace(-1, 1, image.shape[0]), np.linspace(-1, 1, image.shape[1]),
                                 indexing="ij")
        image = image * (1.0 + ramp[0] * rows + ramp[1] * cols)
    if config.noise_std > 0:
        image = image + np.random.default_rng(noise_seed).normal(0.0, config.noise_std, image.shape)
    return image
