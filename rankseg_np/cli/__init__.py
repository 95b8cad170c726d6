"""The ``rankseg-np`` command line: ``predict``, ``calibrate``, ``evaluate``, ``demo`` and ``bench``.

``rankseg-np predict`` runs :func:`rankseg_np.rankseg` over ``.npy`` / ``.npz``
files (and Zarr stores when ``dask`` and ``zarr`` are installed) and writes one
output per input.  It is written for unattended pipelines:

* inputs are never unpickled (``allow_pickle=False``; object arrays are refused
  after reading only their header);
* every output is written to a temporary file in the destination directory and
  moved into place with :func:`os.replace`, so an interrupted run leaves either
  the old file or the new one, never a truncated one;
* a missing, corrupt, pickled or invalid input costs one line on stderr naming
  the file, never a traceback; the other inputs are still processed and the
  exit status says that something failed.

Exit status: 0 success, 1 at least one input failed, 2 bad command-line or
API arguments (for example ``--metric foo``), 130 interrupted.

``rankseg-np calibrate`` fits temperature scaling on labelled validation files
and writes it to a JSON file (``predict --temperature`` applies it);
``rankseg-np evaluate`` scores argmax and RankSEG per image against labels.

``rankseg-np demo`` shows, on calibrated synthetic data, what RankSEG buys over
``argmax``; ``rankseg-np bench`` times the RMA solver against ``np.argmax``.
See ``docs/cli.md`` for the user guide.
"""

from __future__ import annotations

import sys
from typing import Sequence

from ._common import EXIT_FAILED, EXIT_INTERRUPTED, EXIT_OK, EXIT_USAGE, PROG, InputError
from ._io import load_probs, write_output
from ._parser import _join_negative_chunks, build_parser

__all__ = [
    "EXIT_FAILED", "EXIT_INTERRUPTED", "EXIT_OK", "EXIT_USAGE", "PROG", "InputError",
    "build_parser", "load_probs", "main", "write_output",
]


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``rankseg-np`` command line; returns the exit status.

    Examples
    --------
    >>> from rankseg_np.cli import main
    >>> main(["--version"])  # doctest: +ELLIPSIS
    rankseg-np ...
    0
    """
    parser = build_parser()
    try:
        args = parser.parse_args(_join_negative_chunks(list(sys.argv[1:] if argv is None else argv)))
    except SystemExit as exc:  # argparse exits on --help, --version and usage errors
        return exc.code if isinstance(exc.code, int) else (EXIT_OK if exc.code is None else EXIT_USAGE)
    if args.command is None:
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    try:
        return args.func(args)
    except KeyboardInterrupt:
        sys.stderr.write(f"{PROG}: interrupted\n")
        return EXIT_INTERRUPTED
    except BrokenPipeError:  # e.g. `rankseg-np demo | head`
        return EXIT_OK
