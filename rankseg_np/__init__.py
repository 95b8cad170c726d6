"""rankseg_np: metric-optimal segmentation masks from probability maps.

``RankSEG(metric="dice").predict(probs)`` replaces ``probs.argmax(axis=1)``
with the masks that maximise the expected Dice (or IoU) of each image.
"""

from importlib.metadata import PackageNotFoundError, version

from ._api import RankSEG, rankseg
from .evaluation import evaluate
from .expected import expected_metric

try:
    __version__ = version("rankseg-np")
except PackageNotFoundError:  # pragma: no cover - running from a source tree
    __version__ = "0+unknown"

__all__ = ["RankSEG", "rankseg", "evaluate", "expected_metric", "__version__"]
