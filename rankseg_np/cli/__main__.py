"""``python -m rankseg_np.cli``: the same as the ``rankseg-np`` command."""

import sys

from . import main

sys.exit(main())
