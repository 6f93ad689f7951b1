"""Model: the `AutoMedSAM` being trained (`training_model`) and its export as an `*.automedsam.pt` (`export`)."""
