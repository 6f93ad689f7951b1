"""Data: from labelled scans to the training items over cached embeddings.

- `dataset_spec`: the dataset spec (image/label pairs, label value -> class, patient of each case), read and written;
  `patients` refuses one scan under two patients.
- `folder_import` (nnU-Net / MSD folders, TotalSegmentator's reference files) and `slicer_import` (a Slicer
  `.seg.nrrd`) write specs; `case_export` adds a corrected segmentation to an nnU-Net-style folder.
- `alignment`: a case's label map on its image grid, in physical space.
- `prepared_case`: a case as inference sees it (canonical view, preprocessing), per-slice targets, held-out slices;
  `augment` makes seeded augmented copies of its slices.
- `embedding_store`: the frozen encoder's embeddings on disk; `training_set`: the items over them and the sampling
  plan of each epoch.
"""
