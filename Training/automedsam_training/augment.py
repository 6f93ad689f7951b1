"""Seeded slice augmentation: small affine (rotation, scale, translation) and intensity (gamma, noise).

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

    def __post_init__(self) -> None:
        object.__setattr__(self, "scale", tuple(float(v) for v in self.scale))
        object.__setattr__(self, "gamma", tuple(float(v) for v in self.gamma))
        if self.variants < 0 or self.rotation_deg < 0 or self.translation < 0 or self.noise_std < 0:
            raise InputError("augmentation variants, rotation, translation and noise must not be negative")
        if not 0 < self.scale[0] <= self.scale[1] or not 0 < self.gamma[0] <= self.gamma[1]:
            raise InputError(f"augmentation scale {self.scale} and gamma {self.gamma} must be (low, high) with "
                             "0 < low <= high")

    def to_dict(self) -> dict[str, object]:
        """Plain dict (for configs, cache keys and checkpoints)."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}


def slice_rng(config: AugmentConfig, case_id: str, slice_index: int, variant: int) -> np.random.Generator:
    """The generator of one augmented copy: the same numbers for the same case, slice and variant, on any machine."""
    return np.random.default_rng([config.seed, zlib.crc32(case_id.encode()), slice_index, variant])


def augment_slice(image: np.ndarray, labels: np.ndarray, config: AugmentConfig,
                  rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Augmented copies of a 2D slice (float, 0..255) and its label slice (integers), shapes unchanged.

    The image is resampled linearly (outside: its minimum), the labels with nearest neighbour (outside: 0).
    """
    rows, cols = image.shape
    angle = np.deg2rad(rng.uniform(-config.rotation_deg, config.rotation_deg))
    scale = rng.uniform(*config.scale)
    shift = rng.uniform(-config.translation, config.translation, size=2) * np.array([rows, cols])
    gamma = rng.uniform(*config.gamma)
    noise_seed = int(rng.integers(2**31))
    rotation = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]]) / scale
    centre = (np.array([rows, cols]) - 1) / 2.0
    offset = centre - rotation @ (centre + shift)
    warped = ndimage.affine_transform(image.astype(np.float32), rotation, offset, order=1, mode="constant",
                                      cval=float(image.min()))
    warped_labels = ndimage.affine_transform(labels, rotation, offset, order=0, mode="constant", cval=0)
    low, high = float(warped.min()), float(warped.max())
    if high > low:
        warped = low + (high - low) * ((warped - low) / (high - low)) ** gamma
    if config.noise_std > 0:
        warped = warped + np.random.default_rng(noise_seed).normal(0.0, config.noise_std, warped.shape)
    return np.clip(warped, 0.0, 255.0).astype(np.float32), warped_labels.astype(labels.dtype)
