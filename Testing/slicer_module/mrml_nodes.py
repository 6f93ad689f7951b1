"""MRML helpers for the Slicer module's tests (imported by name: this folder is on sys.path while they run)."""

from __future__ import annotations

import numpy as np

from automedsam.volume import Volume


def add_volume_node(scene, volume: Volume, name: str = "CT", class_name: str = "vtkMRMLScalarVolumeNode"):
    """A volume node holding the volume's voxels (KJI; a 4th axis: components) and geometry."""
    from vtkmodules.util import numpy_support
    from vtkmodules.vtkCommonDataModel import vtkImageData

    from automedsam.slicer import bridge as slicer_bridge

    array = np.asarray(volume.array)
    image = vtkImageData()
    image.SetDimensions(*array.shape[2::-1])
    components = array.shape[3] if array.ndim == 4 else 1
    image.GetPointData().SetScalars(
        numpy_support.numpy_to_vtk(np.ascontiguousarray(array).reshape(-1, components), deep=True))
    node = scene.AddNewNodeByClass(class_name, name)
    node.SetAndObserveImageData(image)
    node.SetIJKToRASMatrix(slicer_bridge.vtk_matrix(volume.ijk_to_ras))
    return node
