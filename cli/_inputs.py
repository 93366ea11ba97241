"""Reading what the restoring commands (epr, super_epr, tune) take: the image and the PSF,
checked once, and the RNL that prepdata wrote into the image's history."""

from __future__ import annotations

import logging
import re

import numpy as np

import eprjax
from eprjax._restore import check_psf
from eprjax._stream import Source

from ._convert import describe

log = logging.getLogger("eprjax")

_RNL = re.compile(r"prepdata: RNL (?P<rnl>[0-9.eE+-]+)")


def rnl_from_history(image: eprjax.Image) -> float | None:
    """The last RNL that prepdata wrote into ``image``'s history, or None."""
    found = [m for line in image.history if (m := _RNL.search(line))]
    return float(found[-1]["rnl"]) if found else None


def read_inputs(input: str, psf: str) -> tuple[eprjax.Image, eprjax.Image, Source, np.ndarray]:
    """The image and the PSF files: the image's volumes (T, Z, Y, X), read as they are needed
    (a file larger than memory is never read whole), and the PSF (Z, Y, X) as float32; a
    plane becomes one Z plane. One-line errors for a PSF of several volumes or with values
    `check_psf` refuses, and for non-finite data."""
    image = eprjax.read(input)
    psf_image = eprjax.read(psf)
    log.info("read %s: %s", input, describe(image))
    log.info("read %s: %s", psf, describe(psf_image))
    if psf_image.ndim == 4:
        raise eprjax.ParameterError(f"{psf}: the PSF has {psf_image.shape[0]} volumes; give one")
    h = np.asarray(psf_image.data, dtype=np.float32)
    if h.ndim == 2:
        h = h[None]
    check_psf(h, psf)
    source = Source(image.data)
    source.check_finite(input)
    return image, psf_image, source, h
