"""Adapters that plug RankSEG into the tools users already run.

Each submodule imports its own framework, so importing this package imports
none of them:

* :mod:`rankseg_np.integrations.monai` -- MONAI post-transforms ``RankSEG``
  and ``RankSEGd``, drop-in replacements for ``AsDiscrete(argmax=True)`` and
  ``AsDiscreted`` (``pip install rankseg-np[monai]``).
* :mod:`rankseg_np.integrations.nifti` -- nnU-Net v2 ``probabilities``
  (``.npz``) to a NIfTI label map on the reference image's grid, as
  ``rankseg-np predict --format nifti --like`` does (``pip install rankseg-np[nifti]``).
"""
