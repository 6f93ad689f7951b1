"""Training for AutoMedSAM: fine-tune the class prompt encoder (and optionally the mask decoder) on labelled volumes.

Data flow (docs/architecture.md): a dataset spec (image/label pairs + label value -> class key) -> labels aligned to
their images in physical space -> the SAME `canonical_view` and preprocessing as inference -> frozen image encoder
run once per slice, embeddings cached on disk (fp16, memory-mapped) -> epochs that cost only the class prompt
encoder and the mask decoder -> an `*.automedsam.pt` that `automedsam segment --model PATH` and the Slicer module
load as they are. The command line is `automedsam-train` (`automedsam_training.cli`, which only parses arguments,
and `commands`, which runs them).

Folders by pipeline stage, each importing only the ones before it: `data` (dataset specs and their importers, labels
aligned to images, prepared slices, the embedding store, the training items), `model` (the model being trained and
its export), `training` (the trainer, its step, losses, state, DDP, logs and validation) and `evaluation` (the engine
scored on whole volumes, leave one patient out). `config` is the run's TOML configuration, read by every stage.
"""

__version__ = "0.1.0"
