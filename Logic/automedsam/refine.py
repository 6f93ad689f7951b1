"""Refinement prompts: correct one class on one slice with points and/or a box, then optionally carry it on.

The user's points and box (RAS millimetres, as `segment --box` takes them) are located on the canonical slice by
the volume's geometry (`canonical_view`, `ras_box_to_canonical`) and scaled into model-input pixels by the engine's
own `box_to_model`. The slice is encoded once (or taken from the `EmbeddingCache`, keyed as the engine keys it);
the mask decoder then re-runs with the class prompt plus the user's tokens (`AutoMedSAM.segment_prompts`), so a
refinement costs one decoder pass, not an encoder pass.

`propagate` carries the corrected mask to the neighbouring slices, in both directions: each slice is prompted with
the class prompt plus the box of the previous slice's mask (widened by `PropagationRule.margin`). It stops at the
first slice where the organ has ended (see `PropagationRule`).

Only the refined class changes, and only on the refined slices: its voxels there are replaced by the new mask,
which claims background voxels and the class's own, never another segment's.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from .engine import Box2D, EmbeddingCache, EngineOptions, RasBox, resolve_device
from .errors import InputError
from .metrics import dice
from .preprocess import (
    PreprocessConfig,
    ResizeInfo,
    box_to_model,
    from_model_output,
    mask_box,
    normalize_volume,
    to_model_input,
)
from .runner import ModelRunner
from .volume import CanonicalView, Volume, _point_text, _ras_extent_text, canonical_view, ras_box_to_canonical

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class RasPoint:
    """A click in patient RAS millimetres: `positive` inside the organ, otherwise outside it."""

    position: tuple[float, float, float]
    positive: bool = True


@dataclass(frozen=True)
class Refinement:
    """One correction: a class (catalog key), its points and/or box in RAS mm, all on one slice."""

    key: str
    points: tuple[RasPoint, ...] = ()
    box: RasBox | None = None


@dataclass(frozen=True)
class SlicePrompts:
    """A refinement on the canonical grid: the slice, points (row, col, positive) and box (r0, c0, r1, c1)."""

    slice_index: int
    points: tuple[tuple[int, int, bool], ...] = ()
    box: Box2D | None = None


@dataclass(frozen=True)
class PropagationRule:
    """When `propagate` stops, at the first slice where one of these holds (that slice is left as it was):

    - the organ has ended: the class prompt's presence is below `presence` (the model is sure the class is absent;
      low on purpose, since a slice the model missed often has a middling presence), or the mask is empty or its
      area below `min_area_fraction` of the previous slice's (an organ narrows, it does not drop to a sliver), or
      the mask grows again after it narrowed below `narrowed` of the largest area of the run (past an organ's end
      a box prompt leaks into the next structure: on the sample CT the left kidney's masks shrink to its tip and
      then grow into fat and bowel, while the presence score only drifts);
    - the correction has met the segmentation: the new mask and the slice's existing one agree (Dice >= `agree`),
      so that slices the model (or the user) already got right are not redrawn (the decoder's box masks agree
      with hand-drawn slices of the sample CT at about 0.8, hence 0.7).

    `margin` widens each box taken from the previous mask (pixels, at least, and fraction of its side), so an organ
    that grows from slice to slice is not cut off.
    """

    presence: float = 0.1
    min_area_fraction: float = 0.3
    narrowed: float = 0.25
    agree: float = 0.7
    margin: int = 3
    margin_fraction: float = 0.1


@dataclass
class RefinedLabels:
    """The label map (KJI, input dtype) after the refinement; `slices` lists the canonical slices it changed,
    `stops` why propagation ended in each direction."""

    labels: np.ndarray
    slices: list[int]
    stops: dict[str, str] = field(default_factory=dict)


def locate(view: CanonicalView, refinement: Refinement, thick_box: bool = False) -> SlicePrompts:
    """The refinement's canonical slice and pixels; `InputError` for prompts outside the volume or on several slices.

    A box must lie on one slice, unless `thick_box` (a markups ROI drawn in a slice view has a depth): the box is then
    taken on the slice of the points, or without points on the slice through its middle."""
    points = tuple(_canonical_point(view, point) for point in refinement.points)
    slices = sorted({s for s, _, _, _ in points})
    if len(slices) > 1:
        raise InputError(f"the points lie on {len(slices)} different slices ({_slice_list(view, slices)}); a "
                         "refinement corrects one slice: give points (and box) of the same slice")
    box = None
    if refinement.box is not None:
        s0, s1, r0, r1, c0, c1 = ras_box_to_canonical(view, refinement.box.corner0, refinement.box.corner1)
        box = (r0, c0, r1, c1)
        if slices and not s0 <= slices[0] <= s1:
            raise InputError(f"the box ({_slice_list(view, [s0, s1])}) and the points "
                             f"({_slice_list(view, slices)}) are on different slices; a refinement corrects one slice")
        if not slices and s0 != s1 and not thick_box:
            raise InputError(f"the box spans {s1 - s0 + 1} slices ({_slice_list(view, [s0, s1])}); a refinement "
                             "corrects one slice: give both corners the S of that slice")
        slices = slices or [(s0 + s1) // 2]
    if not slices:
        raise InputError("no refinement prompt given: add --point R,A,S[,+|-] and/or --box R0,A0,S0,R1,A1,S1")
    return SlicePrompts(slices[0], tuple((r, c, positive) for _, r, c, positive in points), box)


def canonical_slice(view: CanonicalView, position: Sequence[float]) -> int:
    """The canonical slice that holds a RAS point (mm); `InputError` outside the volume."""
    return _canonical_point(view, RasPoint(tuple(float(v) for v in position)))[0]


def _canonical_point(view: CanonicalView, point: RasPoint) -> tuple[int, int, int, bool]:
    """(slice, row, column, positive) of the voxel whose extent holds a RAS point; `InputError` outside the volume."""
    ras = np.asarray(point.position, dtype=float)
    if ras.shape != (3,) or not np.all(np.isfinite(ras)):
        raise InputError(f"a point needs three finite RAS coordinates (mm); got {list(point.position)}")
    crs = (np.linalg.inv(view.src_to_ras) @ np.r_[ras, 1.0])[:3]
    index = np.floor(crs + 0.5).astype(int)  # (c, r, s)
    sizes = np.array(view.shape)[::-1]
    if np.any(index < 0) or np.any(index > sizes - 1):
        raise InputError(f"the point at RAS {_point_text(ras)} mm lies outside the volume, which spans "
                         f"{_ras_extent_text(view)}; give points in RAS millimetres as Slicer shows them")
    return int(index[2]), int(index[1]), int(index[0]), point.positive


def slice_position(view: CanonicalView, slice_index: int) -> float:
    """S (mm, RAS) of a canonical slice's centre, as the user sees it in Slicer."""
    return float((view.src_to_ras @ np.array([0.0, 0.0, float(slice_index), 1.0]))[2])


def _slice_list(view: CanonicalView, slices: Sequence[int]) -> str:
    """Slices by their S position (mm), as the user gave them."""
    return "S = " + ", ".join(f"{slice_position(view, s):.1f}" for s in slices) + " mm"


def slice_mask(labels_kji: np.ndarray, view: CanonicalView, slice_index: int, label_value: int) -> np.ndarray:
    """The class's mask (R, C) on a canonical slice."""
    return np.asarray(view.apply(labels_kji)[slice_index] == label_value)


class SliceDecoder:
    """One volume's slices for refinement: normalised once, each slice encoded once (through the runner of the
    options' plan, or taken from `options.cache`), decoded with a class prompt plus point/box tokens. The class
    prompts of the last `CLASS_PROMPTS_KEPT` (slice, class) pairs are kept: the next click on a slice costs only the
    mask decoder."""

    CLASS_PROMPTS_KEPT = 8   # ~4 MB each (the dense prompt)

    def __init__(self, volume: Volume, model: object, options: EngineOptions | None = None) -> None:
        self.options = options or EngineOptions()
        self.model = model
        self.view = canonical_view(volume)
        self.config = PreprocessConfig.from_dict(model.preprocessing)  # type: ignore[attr-defined]
        self.normalized = normalize_volume(self.view.apply(volume.array), volume.modality, self.config)
        device = resolve_device(self.options.device)
        self.runner = ModelRunner.prepare(model, device, self.options.precision,  # type: ignore[arg-type]
                                          self.options.encoder_backend, 1, self.options.stage_timer,
                                          self.options.warn)
        self.cache = self.options.cache if self.options.cache is not None else EmbeddingCache()
        self.cache_key = EmbeddingCache.volume_key(volume, self.config.to_dict(), self.runner.encoder_id)
        self.class_prompts: OrderedDict[tuple[int, int], Any] = OrderedDict()

    def embedding(self, slice_index: int) -> torch.Tensor:
        """The slice's image embedding (1, 256, 64, 64) on the runner's device, encoded only when not cached."""
        cached = self.cache.get(self.cache_key, slice_index)
        if cached is None:
            images, _ = to_model_input(self.normalized[slice_index:slice_index + 1], self.config.image_size)
            with torch.inference_mode():
                computed = self.runner.encode(images)
            self.cache.put(self.cache_key, slice_index, computed[0].cpu().numpy())
            cached = self.cache.get(self.cache_key, slice_index)
        return torch.from_numpy(np.asarray(cached, dtype=np.float32))[None].to(self.runner.device)

    def class_prompt(self, slice_index: int, class_index: int | None, embedding: torch.Tensor) -> Any:
        """The slice's class prompt (`AutoMedSAM.slice_class_prompt`), computed once per kept (slice, class)."""
        if class_index is None:
            return None
        key = (slice_index, class_index)
        if key not in self.class_prompts:
            self.class_prompts[key] = self.model.slice_class_prompt(embedding, class_index)  # type: ignore[attr-defined]
            while len(self.class_prompts) > self.CLASS_PROMPTS_KEPT:
                self.class_prompts.popitem(last=False)
        self.class_prompts.move_to_end(key)
        return self.class_prompts[key]

    def prepare(self, slice_index: int, class_index: int | None) -> None:
        """Make the slice's embedding and class prompt now (e.g. when the user jumps to a slice to review it), so that
        the first click there costs only the mask decoder."""
        with torch.inference_mode():
            self.class_prompt(slice_index, class_index, self.embedding(slice_index))

    def decode(self, slice_index: int, class_index: int | None,
               prompts: SlicePrompts) -> tuple[np.ndarray, float | None]:
        """The class's mask (R, C) on the slice from the prompts, and the presence probability (None without a class
        prompt)."""
        info = ResizeInfo.for_slices(*self.normalized.shape[1:], self.config.image_size)
        device = self.runner.device
        points = np.array([box_to_model((r, c, r, c), info)[:2] for r, c, _ in prompts.points], dtype=np.float32)
        labels = np.array([1.0 if positive else 0.0 for *_, positive in prompts.points], dtype=np.float32)
        box = None if prompts.box is None else torch.from_numpy(box_to_model(prompts.box, info)).to(device)
        with torch.inference_mode():
            embedding = self.embedding(slice_index)
            output = self.model.segment_prompts(  # type: ignore[attr-defined]
                embedding, class_index, torch.from_numpy(points.reshape(-1, 2)).to(device),
                torch.from_numpy(labels).to(device), box, class_prompt=self.class_prompt(slice_index, class_index,
                                                                                         embedding),
                decode=self.runner.decode_prompts)
            probability = torch.sigmoid(from_model_output(output.logits.float(), info))[0, 0].cpu().numpy()
        presence = None if output.presence_logits is None else float(torch.sigmoid(output.presence_logits.float())[0])
        return probability > self.options.threshold, presence


@dataclass(frozen=True)
class RefineOptions:
    """How far a refinement reaches: `propagate` to the neighbouring slices by `rule`, never into the canonical
    slices of `protected` (edited by hand since the last run: propagation stops before them); `thick_box` as for
    `locate`."""

    propagate: bool = False
    rule: PropagationRule = field(default_factory=PropagationRule)
    protected: Collection[int] = ()
    thick_box: bool = False


def refine(volume: Volume, labels_kji: np.ndarray, label_value: int, refinement: Refinement, model: object,
           class_index: int | None, options: EngineOptions | None = None,
           reach: RefineOptions | None = None, decoder: SliceDecoder | None = None) -> RefinedLabels:
    """Refine the segment `label_value` of `labels_kji` (on `volume`'s grid) on the refinement's slice, and with
    `reach.propagate` on its neighbours until the organ ends (see `RefineOptions`); `class_index` is the model's class
    of the segment (None: the user's prompts alone). `InputError` for prompts outside the volume, on several slices,
    or on a slice without the class when no positive point or box says where it is. `decoder`: one kept from an
    earlier refinement of the same volume and model (it holds the normalised volume), else one is made."""
    if np.shape(labels_kji) != volume.array.shape:
        raise InputError(f"the label map's grid {np.shape(labels_kji)} differs from the image's {volume.array.shape}")
    reach = reach or RefineOptions()
    view = canonical_view(volume)
    prompts = locate(view, refinement, reach.thick_box)
    _check_prompts_find_class(view, labels_kji, label_value, prompts)
    decoder = decoder or SliceDecoder(volume, model, options)
    labels = np.array(labels_kji, copy=True)
    canonical = view.apply(labels)  # a view: writes land in `labels`
    mask, _ = decoder.decode(prompts.slice_index, class_index, prompts)
    _replace_slice(canonical, prompts.slice_index, label_value, mask)
    result = RefinedLabels(labels, [prompts.slice_index])
    if reach.propagate:
        for step, name in ((1, "superior"), (-1, "inferior")):
            slices, stop = _propagate(decoder, canonical, label_value, class_index, prompts.slice_index, step, reach)
            result.slices += slices
            result.stops[name] = stop
    result.slices.sort()
    return result


def _check_prompts_find_class(view: CanonicalView, labels_kji: np.ndarray, label_value: int,
                              prompts: SlicePrompts) -> None:
    """Negative points alone can only take away from a mask: on a slice without the class they have nothing to do."""
    if prompts.box is not None or any(positive for *_, positive in prompts.points):
        return
    if not slice_mask(labels_kji, view, prompts.slice_index, label_value).any():
        where = _slice_list(view, [prompts.slice_index])
        raise InputError(f"the class is absent from the slice of the points ({where}); negative points can only remove "
                         "from a mask: add a positive point (+) or a box where the organ is")


def _replace_slice(canonical: np.ndarray, slice_index: int, label_value: int, mask: np.ndarray) -> None:
    """The class's voxels on the slice become `mask`; voxels of other segments stay theirs."""
    current = canonical[slice_index]
    updated = np.where(current == label_value, 0, current)
    updated = np.where(mask & (updated == 0), label_value, updated).astype(current.dtype)
    canonical[slice_index] = updated


def _propagate(decoder: SliceDecoder, canonical: np.ndarray, label_value: int, class_index: int | None,
               start: int, step: int, reach: RefineOptions) -> tuple[list[int], str]:
    """Carry the mask of slice `start` slice by slice in direction `step`; the slices changed and why it stopped."""
    rule = reach.rule
    previous = canonical[start] == label_value
    peak = int(previous.sum())
    slices: list[int] = []
    for index in range(start + step, canonical.shape[0] if step > 0 else -1, step):
        if index in reach.protected:
            return slices, (f"the slice at {_slice_list(decoder.view, [index])} was edited by hand since the last run "
                            "and was left as it is")
        box = _widened_box(previous, rule)
        if box is None:
            return slices, "the previous slice's mask is empty"
        mask, presence = decoder.decode(index, class_index, SlicePrompts(index, (), box))
        stop = _stop_reason(mask, presence, previous, canonical[index] == label_value, peak, rule)
        logger.debug("propagation slice %d: presence %s, area %d px, stop: %s", index, presence, mask.sum(), stop)
        if stop is not None:
            return slices, f"{stop} on the slice at {_slice_list(decoder.view, [index])}"
        _replace_slice(canonical, index, label_value, mask)
        slices.append(index)
        previous = canonical[index] == label_value
        peak = max(peak, int(previous.sum()))
    return slices, "the volume ends"


def _stop_reason(mask: np.ndarray, presence: float | None, previous: np.ndarray, existing: np.ndarray, peak: int,
                 rule: PropagationRule) -> str | None:
    """Why propagation stops at a slice with this new mask (None: carry on); see `PropagationRule`."""
    if presence is not None and presence < rule.presence:
        return f"presence {presence:.2f} < {rule.presence}"
    area, before = int(mask.sum()), int(previous.sum())
    if area == 0 or area < rule.min_area_fraction * before:
        return f"mask area {area} px < {rule.min_area_fraction} x the previous slice's {before} px"
    if area > before and before < rule.narrowed * peak:
        return f"the mask grows again ({before} -> {area} px) after narrowing from {peak} px: the organ has ended"
    agreement = dice(mask, existing)
    if agreement >= rule.agree:
        return f"the slice's segmentation already agrees (Dice {agreement:.2f})"
    return None


def _widened_box(mask: np.ndarray, rule: PropagationRule) -> Box2D | None:
    """The mask's box widened by the rule's margin, clipped to the slice; None for an empty mask."""
    box = mask_box(mask)
    if box is None:
        return None
    r0, c0, r1, c1 = box
    grow_r = max(rule.margin, int(rule.margin_fraction * (r1 - r0 + 1)))
    grow_c = max(rule.margin, int(rule.margin_fraction * (c1 - c0 + 1)))
    rows, cols = mask.shape
    return max(r0 - grow_r, 0), max(c0 - grow_c, 0), min(r1 + grow_r, rows - 1), min(c1 + grow_c, cols - 1)
