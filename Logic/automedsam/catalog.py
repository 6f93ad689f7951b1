"""The organ class catalog: names, label values, SNOMED CT terminology, colours and CT windows.

Loaded from `Resources/classes.csv` (+ `Resources/AutoMedSAM.term.json`); the one place in the package
that knows the classes. Segment names, colours and terminology everywhere come from here.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Code:
    """One coded concept (DICOM / SNOMED CT): coding scheme designator, code value, code meaning."""

    scheme: str
    value: str
    meaning: str

    def slicer_string(self) -> str:
        """`scheme^value^meaning`, the code format of Slicer's terminology strings (empty code: `^^`)."""
        return f"{self.scheme}^{self.value}^{self.meaning}"


@dataclass(frozen=True)
class OrganClass:
    """One segmentable class of the catalog."""

    key: str                                   # stable snake_case id, e.g. "kidney_left"
    name: str                                  # display name, e.g. "Left kidney"
    label_value: int                           # value in this project's label maps
    region: str                                # body region for grouping in the GUI, e.g. "abdomen"
    category: Code                             # SegmentedPropertyCategory
    type: Code                                 # SegmentedPropertyType
    type_modifier: Code | None                 # e.g. Left / Right
    anatomic_region: Code | None               # AnatomicRegion, when the type needs one
    color: tuple[int, int, int]                # RGB 0..255
    modalities: tuple[str, ...]                # ("CT",), ("MR",) or ("CT", "MR")
    window: tuple[float, float]                # default CT window (level, width) in HU
    synonyms: tuple[str, ...] = ()             # other names users type ("left kidney", "kidney l")
    ts_total: int | None = None                # TotalSegmentator `total` task label value
    ts_total_mr: int | None = None             # TotalSegmentator `total_mr` task label value
