"""The command-line programs: ``eprjax`` (with subcommands) and the original programs' names.

A thin layer over the library: each command reads its files, calls one library function and
writes its result, within the frame in `_frame` (flags, -V/-D, one-line errors).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from . import _frame
from ._convert import convert
from ._mmtoi2i import mmtoi2i

app = _frame.new_app(
    "eprjax",
    "eprjax: Exhaustive Photon Restoration on JAX. Each command also runs under its own name "
    "(mmtoi2i, ...), with the original programs' flags.",
)
_frame.register(app, convert, "convert")
_frame.register(app, mmtoi2i, "mmtoi2i")


def main(argv: Sequence[str] | None = None) -> None:
    """The ``eprjax`` console script."""
    sys.exit(_frame.run(app, "eprjax", argv))


def mmtoi2i_main(argv: Sequence[str] | None = None) -> None:
    """The ``mmtoi2i`` console script."""
    sys.exit(_frame.run(_frame.single_app(mmtoi2i, "mmtoi2i"), "mmtoi2i", argv))
