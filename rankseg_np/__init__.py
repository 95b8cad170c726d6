"""rankseg_np: metric-optimal segmentation masks from probability maps.

``RankSEG(metric="dice").predict(probs)`` replaces ``probs.argmax(axis=1)``
with the masks that maximise the expected Dice (or IoU) of each image.
"""

from importlib.metadata import PackageNotFoundError, version

from . import _numba_cache

_numba_cache.configure()  # before any kernel is defined: a read-only install still needs a cache

from ._api import RankSEG, rankseg  # noqa: E402
from ._first_calls import use_numba  # noqa: E402
from .evaluation import evaluate  # noqa: E402
from .expected import expected_metric  # noqa: E402

try:
    __version__ = version("rankseg-np")
except PackageNotFoundError:  # pragma: no cover - running from a source tree
    __version__ = "0+unknown"

__all__ = ["RankSEG", "rankseg", "evaluate", "expected_metric", "use_numba", "__version__"]
