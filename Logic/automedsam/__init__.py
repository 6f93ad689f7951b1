"""AutoMedSAM: class-prompted organ segmentation of CT and MR volumes.

Pure Python + torch; importable without Slicer or Qt. The public entry points are
`automedsam.volume.Volume`, `automedsam.engine.segment` and the `automedsam` command line.
"""

__version__ = "0.1.0"
