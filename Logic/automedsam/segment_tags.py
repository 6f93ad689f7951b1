"""Tags AutoMedSAM writes on segments (Slicer and `.seg.nrrd`), in one dependency-free module.

The Slicer module reads them before any heavy package is installed, and the writers use the same values.
"""

CLASS_KEY_TAG = "AutoMedSAM.ClassKey"  # segment tag holding the catalog key of the class a segment was made for
SEGMENT_STATUS = "inprogress"          # Slicer segment status of an automatic result awaiting review
SLICE_DIGESTS_TAG = "AutoMedSAM.SliceDigests"  # per-slice record of what AutoMedSAM last wrote (`slice_record`)
