"""The command-line programs: ``eprjax`` (with subcommands) and the original programs' names.

A thin layer over the library: each command reads its files, calls one library function and
writes its result, within the frame in `_frame` (flags, -V/-D, one-line errors).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

import zarr

from . import _frame
from ._convert import convert
from ._demo import demo
from ._epr import epr, gpu_epr, super_epr
from ._mmtoi2i import mmtoi2i
from ._prep import prepdata, preppsf
from ._tune import tune

# Zarr decodes and encodes chunks on a pool of threads (six on two cores), each allocating in
# its own C-library arena; the memory they keep varied from run to run by tens of MiB: with
# two segmented runs side by side on two cores a run under -memory 100 peaked up to 112 MiB
# over its baseline, and with one thread 61-64 (both inputs, two pairs of runs), and finished
# sooner (docs/big-data.md). Set before any Zarr array is opened: the pool is made once.
zarr.config.set({"threading.max_workers": 1})

app = _frame.new_app(
    "eprjax",
    "eprjax: Exhaustive Photon Restoration on JAX. Each command also runs under its own name "
    "(mmtoi2i, ...), with the original programs' flags.",
)
_frame.register(app, demo, "demo", needs_arguments=False)
_frame.register(app, preppsf, "preppsf")
_frame.register(app, prepdata, "prepdata")
_frame.register(app, epr, "epr")
_frame.register(app, gpu_epr, "gpu_epr")
_frame.register(app, super_epr, "super_epr")
_frame.register(app, tune, "tune")
_frame.register(app, convert, "convert")
_frame.register(app, mmtoi2i, "mmtoi2i")

SCRIPTS = {"epr": epr, "epr_i2i": epr, "gpu_epr": gpu_epr, "super_epr": super_epr, "mmtoi2i": mmtoi2i, "preppsf": preppsf, "prepdata": prepdata}


def main(argv: Sequence[str] | None = None) -> None:
    """The ``eprjax`` console script."""
    sys.exit(_frame.run(app, "eprjax", argv))


def _script(name: str, argv: Sequence[str] | None) -> None:
    sys.exit(_frame.run(_frame.single_app(SCRIPTS[name], name), name, argv))


def epr_main(argv: Sequence[str] | None = None) -> None:
    """The ``epr`` console script."""
    _script("epr", argv)


def epr_i2i_main(argv: Sequence[str] | None = None) -> None:
    """The ``epr_i2i`` console script (the original's other name for epr)."""
    _script("epr_i2i", argv)


def gpu_epr_main(argv: Sequence[str] | None = None) -> None:
    """The ``gpu_epr`` console script."""
    _script("gpu_epr", argv)


def super_epr_main(argv: Sequence[str] | None = None) -> None:
    """The ``super_epr`` console script."""
    _script("super_epr", argv)


def preppsf_main(argv: Sequence[str] | None = None) -> None:
    """The ``preppsf`` console script."""
    _script("preppsf", argv)


def prepdata_main(argv: Sequence[str] | None = None) -> None:
    """The ``prepdata`` console script."""
    _script("prepdata", argv)


def mmtoi2i_main(argv: Sequence[str] | None = None) -> None:
    """The ``mmtoi2i`` console script."""
    _script("mmtoi2i", argv)
