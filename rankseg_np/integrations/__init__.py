"""Adapters that plug RankSEG into the tools users already run.

Each submodule imports its own framework, so importing this package imports
none of them:

* :mod:`rankseg_np.integrations.monai` -- MONAI post-transforms ``RankSEG``
  and ``RankSEGd``, drop-in replacements for ``AsDiscrete(argmax=True)`` and
  ``AsDiscreted`` (``pip install rankseg-np[monai]``).
"""
