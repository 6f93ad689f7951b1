"""Draw the Slicer module's icon (128 x 128) and the Sample Data thumbnail of the bundled CT.

Run from the repository root: `.venv/bin/python docs/make_module_images.py`. Writes
`AutoMedSAMSlicer/Resources/Icons/AutoMedSAMSlicer.png` (module and extension icon: an axial body outline with the
catalog colours of liver, spleen and kidneys) and `AutoMedSAMSlicer/Resources/Icons/AutoMedSAMSample.png` (an axial
slice of `Resources/SampleData/example_ct_sm.nii.gz` in a soft-tissue window, for the Sample Data module).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from automedsam.catalog import default_catalog
from automedsam.io import read_volume
from automedsam.resources import resource_path
from automedsam.volume import canonical_view

ICONS = Path(__file__).resolve().parents[1] / "AutoMedSAMSlicer" / "Resources" / "Icons"
SCALE = 4                                   # draw 4x larger, then downsample: smooth edges


def _box(x0: float, y0: float, x1: float, y1: float) -> tuple[int, int, int, int]:
    """A box given in icon pixels (0..128), in drawing pixels."""
    return int(x0 * SCALE), int(y0 * SCALE), int(x1 * SCALE), int(y1 * SCALE)


def draw_icon(path: Path) -> Path:
    """Rounded dark square, a grey axial body with the organs in their catalog colours, a spine and a table line."""
    catalog = default_catalog()
    image = Image.new("RGBA", (128 * SCALE, 128 * SCALE), (0, 0, 0, 0))
    draw = ImageDraw.Draw(image)
    draw.rounded_rectangle(_box(2, 2, 126, 126), radius=22 * SCALE, fill=(24, 32, 48, 255))
    draw.ellipse(_box(14, 30, 114, 104), fill=(96, 100, 108, 255), outline=(220, 224, 230, 255), width=3 * SCALE)
    organs = [  # radiological view: the patient's right (liver) on the image's left
        ("liver", (22, 40, 66, 82)), ("spleen", (84, 44, 104, 70)),
        ("kidney_right", (36, 76, 52, 96)), ("kidney_left", (76, 76, 92, 96)),
    ]
    for key, box in organs:
        draw.ellipse(_box(*box), fill=(*catalog.get(key).color, 255))
    draw.ellipse(_box(57, 80, 71, 94), fill=(236, 236, 224, 255))           # vertebra
    draw.ellipse(_box(60, 68, 68, 76), fill=(*catalog.get("aorta").color, 255))
    draw.rounded_rectangle(_box(18, 110, 110, 116), radius=2 * SCALE, fill=(180, 186, 196, 255))
    path.parent.mkdir(parents=True, exist_ok=True)
    image.resize((128, 128), Image.LANCZOS).save(path)
    return path


def draw_sample_thumbnail(path: Path, width: int = 260, height: int = 280) -> Path:
    """The sample CT's axial slice with the most liver, soft-tissue window (W 400, L 40), letterboxed."""
    volume = read_volume(resource_path("SampleData", "example_ct_sm.nii.gz"), "CT")
    labels = read_volume(resource_path("SampleData", "example_ct_sm_seg.nii.gz"), "CT").array
    view = canonical_view(volume)
    liver_per_slice = (view.apply(labels) == default_catalog().get("liver").ts_total).sum(axis=(1, 2))
    axial = view.apply(volume.array)[int(np.argmax(liver_per_slice))].astype(float)
    grey = np.clip((axial + 160.0) / 400.0 * 255.0, 0, 255).astype(np.uint8)
    row_mm, col_mm = view.pixel_spacing[1], view.pixel_spacing[2]
    slice_image = Image.fromarray(grey).resize((round(grey.shape[1] * col_mm), round(grey.shape[0] * row_mm)))
    slice_image.thumbnail((width, height), Image.LANCZOS)
    canvas = Image.new("RGB", (width, height), (0, 0, 0))
    canvas.paste(slice_image, ((width - slice_image.width) // 2, (height - slice_image.height) // 2))
    path.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(path)
    return path


if __name__ == "__main__":
    print(draw_icon(ICONS / "AutoMedSAMSlicer.png"))
    print(draw_sample_thumbnail(ICONS / "AutoMedSAMSample.png"))
