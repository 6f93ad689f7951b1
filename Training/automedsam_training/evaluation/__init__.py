"""Evaluation: the real engine scored on whole volumes (`evaluate`, with `metrics` Dice and NSD) and leave one
patient out (`lopo`: a model per patient, scored on that patient)."""
