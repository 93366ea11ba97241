"""Reading what the restoring commands (epr, super_epr, tune) take: the image and the PSF,
checked once, the PSF brought to the restoration's sampling, and the RNL that prepdata wrote
into the image's history."""

from __future__ import annotations

import logging
import math
import re

import numpy as np
import typer

import eprjax
from eprjax._fine import psf_on_object_grid, voxel_text
from eprjax._prepdata import MEASURED
from eprjax._restore import check_psf
from eprjax._stream import Source

from ._convert import describe

log = logging.getLogger("eprjax")

_RNL = re.compile(r"prepdata: RNL (?P<rnl>[0-9.eE+-]+)(?P<rest>.*)")


def rnl_from_history(image: eprjax.Image, *, camera_only: bool = False) -> float | None:
    """The last RNL that prepdata wrote into ``image``'s history (``camera_only``: from the
    camera's numbers, not from the noise it measured on the data), or None."""
    found = [m for line in image.history if (m := _RNL.search(line)) and not (camera_only and MEASURED in m["rest"])]
    return float(found[-1]["rnl"]) if found else None


VOXEL_RANGE_UM = (1e-6, 1e6)  # a voxel size outside this (a picometre to a metre) is a mistake, and the file formats cannot hold it


MAX_ITERATIONS = 2**31 - 1  # iteration counts are int32 on the device


def check_iterations(iterations: int) -> None:
    """-iterations: from 1 to `MAX_ITERATIONS`."""
    if not 1 <= iterations <= MAX_ITERATIONS:
        raise typer.BadParameter(f"must be between 1 and {MAX_ITERATIONS}, got {iterations}", param_hint="-iterations/-it")


def check_voxel_sizes(size: float | None, spaced: float | None) -> None:
    """-size and -spaced: None, or a voxel size in um within `VOXEL_RANGE_UM`."""
    low, high = VOXEL_RANGE_UM
    for flag, value in (("-size", size), ("-spaced", spaced)):
        if value is not None and not (math.isfinite(value) and value > 0):
            raise typer.BadParameter(f"must be > 0 um, got {value}", param_hint=flag)
        if value is not None and not low <= value <= high:
            raise typer.BadParameter(f"must be between {low:g} and {high:g} um, got {value:g}", param_hint=flag)


def with_voxel_size(image: eprjax.Image, size: float | None, spaced: float | None, name: str) -> eprjax.Image:
    """``image`` with its XY pixel size (-size) and Z step (-spaced) given or overridden."""
    check_voxel_sizes(size, spaced)
    if size is None and spaced is None:
        return image
    z, y, x = image.voxel_size_um
    given = (spaced if spaced is not None else z, size if size is not None else y, size if size is not None else x)
    if (z, y, x) != (None, None, None) and given != (z, y, x):
        log.info("%s: voxel size %s um, as given (the file says %s)", name, voxel_text(given), voxel_text((z, y, x)))
    return image.replace(voxel_size_um=given)


def read_inputs(
    input: str, psf: str, *, size: float | None = None, spaced: float | None = None, factor: tuple[int, int, int] = (1, 1, 1),
) -> tuple[eprjax.Image, eprjax.Image, Source, np.ndarray]:
    """The image and the PSF files: the image's volumes (T, Z, Y, X), read as they are needed
    (a file larger than memory is never read whole), its voxel size given or overridden by
    ``size``/``spaced``, and the PSF (Z, Y, X) as float32 on the restoration's sampling (the
    data's, ``factor`` times finer; `psf_on_object_grid`); a plane becomes one Z plane.
    One-line errors for a PSF of several volumes or with values `check_psf` refuses, and for
    non-finite data."""
    image = with_voxel_size(eprjax.read(input), size, spaced, input)
    psf_image = eprjax.read(psf)
    log.info("read %s: %s", input, describe(image))
    log.info("read %s: %s", psf, describe(psf_image))
    if psf_image.ndim == 4:
        raise eprjax.ParameterError(f"{psf}: the PSF has {psf_image.shape[0]} volumes; give one")
    h = np.asarray(psf_image.data, dtype=np.float32)
    if h.ndim == 2:
        h = h[None]
    check_psf(h, psf)
    h = psf_on_object_grid(image, psf_image, h, factor, psf, input)
    source = Source(image.data)
    source.check_finite(input)
    return image, psf_image, source, h
