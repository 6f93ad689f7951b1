"""AutoMedSAM: LiteMedSAM whose box prompt is replaced by a learned class prompt (docs/architecture.md, Model).

A plain PyTorch model: it encodes each slice once (`encode`), then segments all selected classes at once
(`segment_classes`: class prompt encoder -> SAM mask decoder on B*C (slice, class) pairs) or box prompts
(`segment_boxes`). Where and how it runs (device, precision, OpenVINO) is `automedsam.runner.ModelRunner`'s job,
which decodes the same pairs (`class_pairs` -> decoder -> `class_output`) with the backend of its plan. All tensors
are at model-input resolution (256 x 256); mapping back to the slice is the engine's job. The caller runs these
under `torch.inference_mode()`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any, NamedTuple

import torch
from segment_anything.modeling import PromptEncoder
from torch import nn

from ..errors import ModelError
from .checkpoint import Checkpoint, load_checkpoint, state_dict_mismatch
from .class_prompt import build_class_prompt_encoder
from .class_prompt_base import ClassPromptConfig, ClassPromptModule, PromptEmbeddings
from .lite_medsam import LiteMedSAM, PairedMaskDecoder, load_lite_medsam

DEFAULT_PREPROCESSING: dict[str, Any] = {"image_size": 256, "ct_window": [40.0, 400.0], "mr_percentiles": [0.5, 99.5]}


ABSENT_LOGIT = -1.0e4   # logit of a pair that was not decoded: sigmoid gives exactly 0


def _pairs_to_decode(presence_logits: torch.Tensor, threshold: float | None) -> torch.Tensor:
    """Flat (b-major) indices of the (slice, class) pairs to decode: all, or those with presence >= threshold."""
    flat = presence_logits.detach().flatten()
    if threshold is None:
        return torch.arange(flat.numel(), device=flat.device)
    return torch.nonzero(torch.sigmoid(flat.float()) >= threshold).flatten()


def _pair_prompts(prompts: PromptEmbeddings, pairs: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, C, ...) prompt embeddings -> flat (N, 2, 256) sparse and (N, 256, 64, 64) dense, of `pairs` if given."""
    sparse, dense = prompts.sparse.flatten(0, 1), prompts.dense.flatten(0, 1)
    return (sparse, dense) if pairs is None else (sparse[pairs], dense[pairs])


class ClassOutput(NamedTuple):
    """Class-prompt result for B slices x C classes."""

    logits: torch.Tensor                    # (B, C, 256, 256) mask logits at model-input resolution (ABSENT_LOGIT
                                            # where the pair was gated out by presence)
    presence_logits: torch.Tensor           # (B, C) > 0: the class is on the slice
    probability_std: torch.Tensor | None    # (B, C, 256, 256) std of sigmoid(logits) over noise samples, or None


class PromptOutput(NamedTuple):
    """Refinement result for one slice (`AutoMedSAM.segment_prompts`)."""

    logits: torch.Tensor                    # (1, 1, 256, 256) mask logits at model-input resolution
    presence_logits: torch.Tensor | None    # (1,) > 0: the class is on the slice; None without a class prompt


class SliceClassPrompt(NamedTuple):
    """One slice's class prompt (`AutoMedSAM.slice_class_prompt`): what every refinement of that slice and class
    reuses, so that a second click costs only the mask decoder."""

    presence_logits: torch.Tensor           # (1,)
    sparse: torch.Tensor                    # (1, 2, 256)
    dense: torch.Tensor                     # (1, 256, 64, 64)


class ClassPairs(NamedTuple):
    """The (slice, class) pairs of one class-prompt call that are decoded, with their prompts (`class_pairs`)."""

    embeddings: torch.Tensor        # (B, 256, 64, 64) image embeddings of the slices
    classes: int                    # C, the number of classes asked for
    presence_logits: torch.Tensor   # (B, C) > 0: the class is on the slice
    pairs: torch.Tensor             # (N,) flat b-major indices (b * C + c) of the pairs to decode
    sparse: torch.Tensor            # (N, 2, 256) sparse prompts of those pairs
    dense: torch.Tensor             # (N, 256, 64, 64) dense prompts of those pairs
    condition: Any                  # the class prompt encoder's condition of those pairs (noise samples reuse it)

    def images(self, shared: bool = False) -> torch.Tensor:
        """The image embedding of each pair (N, 256, 64, 64); with `shared`, when every pair is decoded, the B
        embeddings themselves (SAM's paired decoder gives each its C prompts in order: no copy per pair)."""
        if shared and len(self.pairs) == self.embeddings.shape[0] * self.classes:
            return self.embeddings
        return self.embeddings[torch.div(self.pairs, max(self.classes, 1), rounding_mode="floor")]


def _probability_std(logits: Iterable[torch.Tensor], samples: int) -> torch.Tensor:
    """Per-pixel population std of sigmoid(logits) over `samples` noise samples' logits, accumulated one by one."""
    total = squares = None
    for sample_logits in logits:
        probabilities = torch.sigmoid(sample_logits.float())
        total = probabilities if total is None else total + probabilities
        squares = probabilities * probabilities if squares is None else squares + probabilities * probabilities
    mean = total / samples
    return (squares / samples - mean * mean).clamp_min(0.0).sqrt()


class AutoMedSAM(LiteMedSAM):
    """LiteMedSAM + an optional class prompt encoder; `classes` are the catalog keys of its class indices."""

    def __init__(self, image_encoder: nn.Module, prompt_encoder: PromptEncoder, mask_decoder: PairedMaskDecoder,
                 class_prompt_encoder: ClassPromptModule | None = None, classes: Sequence[str] = (),
                 preprocessing: Mapping[str, Any] | None = None, base_sha256: str | None = None) -> None:
        super().__init__(image_encoder, prompt_encoder, mask_decoder)
        self.class_prompt_encoder = class_prompt_encoder
        self.classes: tuple[str, ...] = ()
        if class_prompt_encoder is not None or classes:
            self._set_classes(class_prompt_encoder, classes)
        self.preprocessing: dict[str, Any] = dict(DEFAULT_PREPROCESSING if preprocessing is None else preprocessing)
        self.base_sha256 = base_sha256
        self.mask_decoder_tuned = False   # set by fine-tuning; `save_checkpoint` then stores the decoder too

    @classmethod
    def from_lite_medsam(cls, base: LiteMedSAM, base_sha256: str | None = None) -> AutoMedSAM:
        """Box-mode AutoMedSAM sharing `base`'s modules (no class prompt encoder, `classes == ()`)."""
        return cls(base.image_encoder, base.prompt_encoder, base.mask_decoder, base_sha256=base_sha256)

    @property
    def encoder_id(self) -> str:
        """Identifies the image encoder's weights (embedding caches are keyed by it)."""
        return f"litemedsam-tinyvit:{(self.base_sha256 or 'unverified')[:16]}"

    def _set_classes(self, encoder: ClassPromptModule | None, classes: Sequence[str]) -> None:
        keys = tuple(classes)
        if encoder is None:
            raise ModelError(f"classes {keys} were given without a class prompt encoder to segment them")
        if len(keys) != encoder.config.num_classes or len(set(keys)) != len(keys):
            raise ModelError(f"the class prompt encoder has {encoder.config.num_classes} classes but "
                             f"{len(keys)} distinct class keys were given: {keys}")
        self.classes = keys

    def attach_class_prompt_encoder(self, encoder: ClassPromptModule, classes: Sequence[str]) -> None:
        """Use `encoder` for `classes` (catalog keys, one per class index), replacing any previous one."""
        self._set_classes(encoder, classes)
        self.class_prompt_encoder = encoder.to(self.prompt_encoder.no_mask_embed.weight.device)

    def attach_new_class_prompt_encoder(self, classes: Sequence[str],
                                        config: ClassPromptConfig | None = None) -> ClassPromptModule:
        """Attach an untrained class prompt encoder for `classes` (for training); returns it.

        `config.num_classes` is set to `len(classes)`. The dense output of the "automedsam" variant starts at SAM's
        no-mask embedding, i.e. at the dense part of a box prompt.
        """
        config = replace(config or ClassPromptConfig(), num_classes=len(classes))
        encoder = build_class_prompt_encoder(config)
        if hasattr(encoder, "dense_bias"):
            encoder.init_dense_bias(self.prompt_encoder.no_mask_embed.weight.detach().cpu())
        self.attach_class_prompt_encoder(encoder, classes)
        return encoder

    def add_classes(self, keys: Sequence[str]) -> list[int]:
        """Extend the class set with new catalog keys for fine-tuning; existing classes keep their embeddings."""
        encoder = self._require_class_prompt_encoder()
        duplicates = sorted(set(keys) & set(self.classes)) or sorted({k for k in keys if list(keys).count(k) > 1})
        if duplicates:
            raise ModelError(f"classes {duplicates} are already in the model or repeated; add each new class once")
        indices = list(encoder.extend_classes(len(keys)))
        self.classes = self.classes + tuple(keys)
        return indices

    def class_index(self, key: str) -> int:
        """Class index of a catalog key; `ModelError` naming the model's classes if it has no such class."""
        if key in self.classes:
            return self.classes.index(key)
        known = ", ".join(self.classes) if self.classes else "none (it has no class prompt encoder: box prompts only)"
        raise ModelError(f"this model cannot segment {key!r}; its classes are: {known}")

    def _require_class_prompt_encoder(self) -> ClassPromptModule:
        if self.class_prompt_encoder is None:
            raise ModelError("this model has no class prompt encoder, so it can only segment with box prompts; "
                             "load a model with a class checkpoint (*.automedsam.pt) to segment by class")
        return self.class_prompt_encoder

    def class_pairs(self, embeddings: torch.Tensor, class_indices: torch.Tensor,
                    presence_threshold: float | None = None) -> ClassPairs:
        """Embeddings (B, 256, 64, 64), class indices (C,) -> the (slice, class) pairs to decode and their prompts.

        The class prompt encoder's shared work runs once for all pairs. With `presence_threshold` only the pairs whose
        presence probability reaches it get prompts (and are decoded); the others are left out.
        """
        encoder = self._require_class_prompt_encoder()
        b, c = embeddings.shape[0], class_indices.shape[0]
        condition = encoder.condition(embeddings, class_indices)
        presence = encoder.presence_before_prompts(condition)
        full = None
        if presence is None:  # the variant knows presence only with the prompts
            full = encoder.prompts(condition)
            presence = full.presence_logits
        pairs = _pairs_to_decode(presence, presence_threshold)
        selected = condition if len(pairs) == b * c else encoder.select(condition, pairs)
        sparse, dense = _pair_prompts(full, pairs) if full is not None else _pair_prompts(encoder.prompts(selected))
        return ClassPairs(embeddings, c, presence, pairs, sparse, dense, selected)

    def noise_prompts(self, pairs: ClassPairs, samples: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Sparse (N, 2, 256) and dense (N, 256, 64, 64) prompts of `samples` seeded noise samples of the pairs, one
        sample at a time; none for a deterministic class prompt encoder (`stochastic = False`)."""
        encoder = self._require_class_prompt_encoder()
        if not encoder.stochastic:
            return
        for sample in range(samples):
            yield _pair_prompts(encoder.prompts(pairs.condition, sample=sample))

    def class_output(self, pairs: ClassPairs, logits: torch.Tensor, noise_logits: Iterable[torch.Tensor],
                     noise_samples: int = 0) -> ClassOutput:
        """The decoded pairs' logits (N, 1, 256, 256) placed among all B x C pairs (`ABSENT_LOGIT` where not
        decoded), with, for `noise_samples` > 0, the std of the mask probability: over the noise samples' logits, or
        sqrt(p (1 - p)) of the probability p for a deterministic encoder (its `noise_logits` are empty)."""
        b, c, size = pairs.embeddings.shape[0], pairs.classes, self.image_size
        full = pairs.embeddings.new_full((b * c, 1, size, size), ABSENT_LOGIT)
        full[pairs.pairs] = logits.to(full.dtype)
        std = None
        if noise_samples > 0:
            std = torch.zeros_like(full, dtype=torch.float32)
            if self._require_class_prompt_encoder().stochastic:
                std[pairs.pairs] = _probability_std(noise_logits, noise_samples)
            else:   # a deterministic prompt: the Bernoulli std sqrt(p (1 - p)) of the mask probability
                probabilities = torch.sigmoid(full[pairs.pairs].float())
                std[pairs.pairs] = (probabilities * (1.0 - probabilities)).sqrt()
            std = std.view(b, c, size, size)
        return ClassOutput(full.view(b, c, size, size), pairs.presence_logits, std)

    def decode_pairs(self, images: torch.Tensor, sparse: torch.Tensor, dense: torch.Tensor) -> torch.Tensor:
        """Prompts (N, 2, 256), (N, 256, 64, 64) with one image embedding each, or with B embeddings (N, B) that take
        N / B consecutive prompts each -> mask logits (N, 1, 256, 256) by SAM's paired decoder (none for N = 0)."""
        if sparse.shape[0] == 0:
            return images.new_zeros((0, 1, self.image_size, self.image_size))
        logits, _ = self.decode(images, sparse.to(images.dtype), dense.to(images.dtype))
        return logits

    def segment_classes(self, embeddings: torch.Tensor, class_indices: torch.Tensor, noise_samples: int = 0,
                        presence_threshold: float | None = None) -> ClassOutput:
        """Embeddings (B, 256, 64, 64), class indices (C,) -> `ClassOutput`; the decoder runs on the pairs at once.

        With `presence_threshold` only the (slice, class) pairs whose presence probability reaches it are sampled and
        decoded; the others get `ABSENT_LOGIT` (probability 0) and std 0, the masks a caller that gates by presence
        gets anyway, for a fraction of the work (most classes are absent from most slices). With `noise_samples` =
        N > 0 the class prompt encoder also draws N seeded noise samples (its shared work is reused) and
        `probability_std` is the per-pixel population std of their sigmoid(logits); a deterministic encoder
        (`stochastic = False`) gives sqrt(p (1 - p)) of the mask probability p instead. The steps are public
        (`class_pairs`, `noise_prompts`, `decode_pairs`, `class_output`) so that `automedsam.runner` can decode the
        same pairs with another backend.
        """
        pairs = self.class_pairs(embeddings, class_indices, presence_threshold)
        images = pairs.images(shared=True)
        logits = self.decode_pairs(images, pairs.sparse, pairs.dense)
        noise = (self.decode_pairs(images, *prompts) for prompts in self.noise_prompts(pairs, noise_samples))
        return self.class_output(pairs, logits, noise, noise_samples)

    def slice_class_prompt(self, embeddings: torch.Tensor, class_index: int) -> SliceClassPrompt:
        """The class prompt of `class_index` on one slice's embedding (1, 256, 64, 64)."""
        pairs = self.class_pairs(embeddings, torch.tensor([class_index], device=embeddings.device))
        return SliceClassPrompt(pairs.presence_logits[:, 0], pairs.sparse, pairs.dense)

    def segment_prompts(self, embeddings: torch.Tensor, class_index: int | None, points: torch.Tensor,
                        point_labels: torch.Tensor, box: torch.Tensor | None,
                        class_prompt: SliceClassPrompt | None = None,
                        decode: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
                        ) -> PromptOutput:
        """One slice's refinement: its embedding (1, 256, 64, 64), the class prompt of `class_index` (None: SAM's
        no-mask prompt alone; `class_prompt`: that prompt already computed for this slice) plus SAM's tokens of
        `points` (P, 2) x, y in model-input pixels with `point_labels` (P,) 1 inside / 0 outside, and of an optional
        `box` (4,) x0, y0, x1, y1 -> `PromptOutput`. `decode`: (embeddings, sparse, dense) -> mask logits, e.g. a
        runner's OpenVINO decoder (`ModelRunner.decode_prompts`); default this model's mask decoder.

        The class prompt's dense embedding is kept and the user's tokens are appended to its sparse tokens, except
        that a box replaces the class's two sparse tokens: those were distilled to stand for a box of the class,
        and two boxes would contradict each other where the user corrects the class's.
        """
        user_points = (points[None].float(), point_labels[None].float()) if points.shape[0] else None
        user_box = None if box is None else box.reshape(1, 4).float()
        user_sparse, dense = self.prompt_encoder(points=user_points, boxes=user_box, masks=None)
        presence = None
        sparse = user_sparse
        if class_index is not None:
            prompt = class_prompt if class_prompt is not None else self.slice_class_prompt(embeddings, class_index)
            presence, dense = prompt.presence_logits, prompt.dense
            sparse = user_sparse if user_box is not None else torch.cat([prompt.sparse, user_sparse], dim=1)
        sparse, dense = sparse.to(embeddings.dtype), dense.to(embeddings.dtype)
        logits = decode(embeddings, sparse, dense) if decode is not None else self.decode(embeddings, sparse, dense)[0]
        return PromptOutput(logits, presence)

    def train(self, mode: bool = True) -> AutoMedSAM:
        """Set training mode, except for the image encoder: it is frozen and its BatchNorm must keep eval statistics."""
        super().train(mode)
        self.image_encoder.eval()
        return self


def apply_checkpoint(model: AutoMedSAM, checkpoint: Checkpoint) -> None:
    """Put a loaded checkpoint's class prompt encoder (the module itself, not a copy), classes, preprocessing and,
    if it holds one, fine-tuned mask decoder into `model`."""
    if checkpoint.mask_decoder_state is not None:
        try:
            model.mask_decoder.load_state_dict(checkpoint.mask_decoder_state, strict=True)
        except RuntimeError as error:
            raise ModelError(f"checkpoint {checkpoint.path}: its mask decoder weights do not fit LiteMedSAM's decoder "
                             f"({state_dict_mismatch(error)}); the file is damaged") from error
        model.mask_decoder_tuned = True
    model.attach_class_prompt_encoder(checkpoint.class_prompt_encoder, checkpoint.classes)
    model.preprocessing = dict(checkpoint.preprocessing)


def build_automedsam(base_weights: Path | str, base_sha256: str, checkpoint: Checkpoint | Path | str | None = None,
                     checkpoint_sha256: str | None = None) -> AutoMedSAM:
    """AutoMedSAM from LiteMedSAM weights (SHA-256 checked) and, optionally, a class checkpoint: a loaded
    `Checkpoint`, or the path of a `*.automedsam.pt` (SHA-256 checked against `checkpoint_sha256` when given).

    Without a checkpoint the model runs box prompts only (`classes == ()`). The checkpoint must have been trained on
    the same base weights (its recorded SHA-256 is compared with `base_sha256`). Returns the model in eval mode on
    the CPU; every file problem raises `ModelError`.
    """
    if isinstance(checkpoint, Checkpoint):
        checkpoint.check_base(base_sha256)
    model = AutoMedSAM.from_lite_medsam(load_lite_medsam(base_weights, base_sha256), base_sha256=base_sha256.lower())
    if checkpoint is not None and not isinstance(checkpoint, Checkpoint):
        checkpoint = load_checkpoint(checkpoint, checkpoint_sha256, base_sha256=base_sha256)
    if checkpoint is not None:
        apply_checkpoint(model, checkpoint)
    return model.eval()
