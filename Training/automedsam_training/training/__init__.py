"""Training: the `trainer` (schedule, checkpoints, resume, logs, early stopping) and what it runs: one `step`'s
forward pass and `losses`, the resumable `state`, `distributed` (DDP), `logs` and `validation` on held-out slices."""
