"""Model code: TinyViT image encoder, SAM prompt encoder and paired mask decoder (LiteMedSAM), the class prompt
encoder, the composed `AutoMedSAM` and its checkpoints.

Typical use::

    from automedsam.model import LITE_MEDSAM_SHA256, build_automedsam, lite_medsam_asset_path
    model = build_automedsam(lite_medsam_asset_path(), LITE_MEDSAM_SHA256, "liver.automedsam.pt", checkpoint_sha)
"""

from .automedsam import DEFAULT_PREPROCESSING, AutoMedSAM, ClassOutput, apply_checkpoint, build_automedsam
from .checkpoint import CHECKPOINT_SUFFIX, Checkpoint, load_checkpoint, save_checkpoint, sha256_of
from .class_prompt import ClassPromptEncoder, build_class_prompt_encoder
from .class_prompt_anatomy import AnatomyClassPromptEncoder
from .class_prompt_base import ClassPromptConfig, ClassPromptModule, DenoisingLoss, PromptEmbeddings
from .class_prompt_official import OfficialClassPromptEncoder
from .lite_medsam import (
    LITE_MEDSAM_SHA256,
    LITE_MEDSAM_SIZE,
    BoxOutput,
    LiteMedSAM,
    PairedMaskDecoder,
    build_lite_medsam,
    lite_medsam_asset_path,
    load_lite_medsam,
)
from .tiny_vit import TinyViT

__all__ = [
    "CHECKPOINT_SUFFIX",
    "DEFAULT_PREPROCESSING",
    "LITE_MEDSAM_SHA256",
    "LITE_MEDSAM_SIZE",
    "AnatomyClassPromptEncoder",
    "AutoMedSAM",
    "BoxOutput",
    "Checkpoint",
    "ClassOutput",
    "ClassPromptConfig",
    "ClassPromptEncoder",
    "ClassPromptModule",
    "DenoisingLoss",
    "LiteMedSAM",
    "OfficialClassPromptEncoder",
    "PairedMaskDecoder",
    "PromptEmbeddings",
    "TinyViT",
    "apply_checkpoint",
    "build_automedsam",
    "build_class_prompt_encoder",
    "build_lite_medsam",
    "lite_medsam_asset_path",
    "load_checkpoint",
    "load_lite_medsam",
    "save_checkpoint",
    "sha256_of",
]
