"""The 3D Slicer layer: what the scripted module uses, without Qt, tested headless against `slicer-core`.

- `request`: the module's `SegmentationRequest` and every check of it; importable before torch is installed.
- `class_picker`: what the module's class tree shows (grouping by region, filters, selection text).
- `install`: installs the Python packages and model files the module needs, through an injected host.
- `bridge`: MRML volume node -> `Volume`; `LabelVolume` -> segmentation node (one labelmap import).
- `logic`: `SceneSegmenter`, which runs a request on MRML nodes (uncertainty volume, subject hierarchy, export).

Only `bridge` and `logic` import `slicer` (the MRML library) and torch; the package itself imports nothing, so
`request`, `class_picker` and `install` load in a Slicer that does not have torch yet.
"""
