"""Validation during training: Dice on the held-out slice ranges, from cached embeddings, as inference decides.

For each case and each class its label map annotates, the class prompt encoder runs on every validation slice;
pairs whose presence score is below 0.5 predict nothing (as in the engine), the others are decoded and thresholded
at probability 0.5. Dice is accumulated over the slice range (a 3D Dice at model-input resolution, padding cropped)
and averaged over the (case, class) pairs whose reference is not empty. This is the early-stopping signal; the full
3D evaluation after post-processing is `evaluation/evaluate.py`.
"""

from __future__ import annotations

from collections import defaultdict

import numpy as np
import torch

from automedsam.model import AutoMedSAM
from automedsam.preprocess import ResizeInfo

from ..data.training_set import TrainingSet

PRESENCE_THRESHOLD = 0.5
MASK_THRESHOLD = 0.5


@torch.inference_mode()
def validate(model: AutoMedSAM, data: TrainingSet, device: torch.device, batch_size: int = 4) -> dict[str, object]:
    """{"dice": mean Dice, "per_class": {key: mean over cases}, "per_case": {case: {key: Dice}}} (empty if none)."""
    model.eval()
    encoder = model.class_prompt_encoder
    sums: dict[tuple[str, str], np.ndarray] = defaultdict(lambda: np.zeros(3))   # overlap, predicted, reference
    for case_index, case in enumerate(data.cases):
        items = np.flatnonzero(data.is_val & (data.item_case == case_index))
        annotated = np.flatnonzero(case.annotated())
        if items.size == 0 or annotated.size == 0:
            continue
        info = ResizeInfo.for_slices(*case.view.shape[1:], case.config.image_size)
        indices = torch.tensor([model.class_index(data.classes[c]) for c in annotated], device=device)
        for start in range(0, items.size, batch_size):
            batch = items[start:start + batch_size]
            embeddings = torch.from_numpy(np.stack([data.embedding(i) for i in batch]).astype(np.float32)).to(device)
            prompts = encoder.prompts(encoder.condition(embeddings, indices))
            predicted = _decode_present(model, embeddings, prompts, info)           # (B, C, S, S) bool
            reference = torch.from_numpy(data.targets.masks[batch]).to(device)
            for j, c in enumerate(annotated):
                truth = reference == c + 1
                guess = predicted[:, j]
                sums[(case.case_id, data.classes[c])] += [float((truth & guess).sum()), float(guess.sum()),
                                                          float(truth.sum())]
    return _summary(sums)


def _decode_present(model: AutoMedSAM, embeddings: torch.Tensor, prompts: object, info: ResizeInfo) -> torch.Tensor:
    """Masks (B, C, S, S) for pairs with presence >= 0.5 (others empty), outside the resized image cropped."""
    b, c = prompts.presence_logits.shape
    side = model.image_size
    masks = torch.zeros((b, c, side, side), dtype=torch.bool, device=embeddings.device)
    chosen = torch.nonzero(torch.sigmoid(prompts.presence_logits) >= PRESENCE_THRESHOLD)
    for start in range(0, chosen.shape[0], 8):
        pairs = chosen[start:start + 8]
        logits, _ = model.decode(embeddings[pairs[:, 0]], prompts.sparse[pairs[:, 0], pairs[:, 1]],
                                 prompts.dense[pairs[:, 0], pairs[:, 1]])
        masks[pairs[:, 0], pairs[:, 1]] = torch.sigmoid(logits[:, 0].float()) > MASK_THRESHOLD
    masks[..., info.resized_size[0]:, :] = False
    masks[..., :, info.resized_size[1]:] = False
    return masks


def _summary(sums: dict[tuple[str, str], np.ndarray]) -> dict[str, object]:
    per_case: dict[str, dict[str, float]] = defaultdict(dict)
    for (case, key), (overlap, predicted, reference) in sums.items():
        if reference > 0:
            per_case[case][key] = 2.0 * overlap / (predicted + reference)
    values = [dice for scores in per_case.values() for dice in scores.values()]
    classes = sorted({key for scores in per_case.values() for key in scores})
    per_class = {key: float(np.mean([s[key] for s in per_case.values() if key in s])) for key in classes}
    return {"dice": float(np.mean(values)) if values else float("nan"), "per_class": per_class,
            "per_case": dict(per_case)}
