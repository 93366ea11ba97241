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
from eprjax._fine import resample_psf
from eprjax._restore import check_psf
from eprjax._stream import Source

from ._convert import describe

log = logging.getLogger("eprjax")

_RNL = re.compile(r"prepdata: RNL (?P<rnl>[0-9.eE+-]+)(?P<rest>.*)")
MEASURED = "noise measured on the data"  # how prepdata's history says its RNL did not come from the camera
VOXEL_TOLERANCE = 0.01  # PSF and data voxel sizes may differ by this fraction
NYQUIST_SHARE = 0.01  # a PSF coarser than the data: refused when more of its energy than this
NYQUIST_BAND = 0.4  # ... lies above this many cycles per voxel (the top fifth of its band)


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
        log.info("%s: voxel size %s um, as given (the file says %s)", name, _voxel_text(given), _voxel_text((z, y, x)))
    return image.replace(voxel_size_um=given)


def _voxel_text(voxel) -> str:
    return " x ".join("?" if v is None else f"{v:.4g}" for v in voxel)


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


def _too_coarse(h: np.ndarray, axis: int) -> float:
    """The share of ``h``'s energy above `NYQUIST_BAND` cycles per voxel along ``axis``: a
    PSF sampled at its Nyquist limit or coarser holds much there, one sampled finer nearly
    none."""
    power = np.abs(np.fft.fftn(np.asarray(h, np.float64))) ** 2
    f = np.abs(np.fft.fftfreq(h.shape[axis]))
    profile = power.sum(axis=tuple(a for a in range(3) if a != axis))
    return float(profile[f > NYQUIST_BAND].sum() / max(profile.sum(), 1e-300))


def psf_on_object_grid(
    data: eprjax.Image, psf: eprjax.Image, h: np.ndarray, factor: tuple[int, int, int], psf_name: str, data_name: str = "the data",
) -> np.ndarray:
    """The PSF on the restoration's grid (``factor`` times finer than the data's). Along each
    axis its file says how it is sampled: like the restoration's grid (used as it is), like
    the data (brought to a finer grid by band-limited interpolation, `fine_psf`), or at
    another voxel size (brought to the grid's by band-limited resampling, `resample_psf`;
    refused where the PSF is coarser than the grid and holds light up to its own sampling
    limit, since interpolation would invent what it lacks). Where the PSF does not say, like
    the data; where the data do not say, like the PSF (with a warning)."""
    steps, assumed, given, wanted, unsaid = [], [], [], [], []
    for axis, k, a, b in zip("zyx", factor, data.voxel_size_um, psf.voxel_size_um, strict=True):
        if a is None and b is not None:
            unsaid.append(axis)
            a = b * k if k > 1 else b
        if b is None:
            steps.append(k)
            if k > 1:
                assumed.append(axis)
            given.append(None)
            wanted.append(None)
            continue
        fine = a / k
        given.append(b)
        wanted.append(fine)
        if abs(b - fine) <= VOXEL_TOLERANCE * max(b, fine):
            steps.append(1)
        elif abs(b - a) <= VOXEL_TOLERANCE * max(a, b):
            steps.append(k)
        else:
            steps.append(None)
    if unsaid:
        log.warning(
            "%s states no voxel size along %s; the PSF's (%s um) is taken for it: give -size and -spaced if that is wrong",
            data_name, ", ".join(unsaid), _voxel_text(psf.voxel_size_um),
        )
    if assumed:
        log.info("the voxel size along %s is unknown: the PSF is taken as sampled like the data there", ", ".join(assumed))
    if None in steps:
        voxel_in = tuple(b if b is not None else 1.0 for b in given)
        voxel_out = tuple(w if w is not None else 1.0 / k for w, k in zip(wanted, factor, strict=True))
        for axis, (b, w) in enumerate(zip(voxel_in, voxel_out, strict=True)):
            if b > w * (1 + VOXEL_TOLERANCE):
                share = _too_coarse(h, axis)
                if share > NYQUIST_SHARE:
                    raise eprjax.ParameterError(
                        f"{psf_name}: the PSF is sampled at {b:.4g} um along {'zyx'[axis]}, coarser than the {w:.4g} um "
                        f"needed, and holds light up to its own sampling limit ({100 * share:.1f}% of its energy in the top fifth "
                        "of its band): resampling would invent detail; measure or compute the PSF at the data's sampling"
                    )
        resampled = np.maximum(np.asarray(resample_psf(h, voxel_in, voxel_out)), 0)
        log.info(
            "the PSF (%s um, %s) brought to the %s sampling (%s um) by band-limited resampling: %s",
            _voxel_text(voxel_in), "x".join(map(str, h.shape)), "data's" if factor == (1, 1, 1) else "restoration grid's",
            _voxel_text(voxel_out), "x".join(map(str, resampled.shape)),
        )
        return resampled.astype(np.float32)
    if steps == [1, 1, 1]:
        return h
    fine_h = np.asarray(eprjax.fine_psf(h, tuple(steps)))
    log.info(
        "the PSF, sampled like the data, brought onto the %dx%dx%d finer grid by band-limited interpolation: %s -> %s "
        "(it holds no detail finer than the data's sampling; a PSF measured or computed on the fine grid resolves more)",
        *factor, "x".join(map(str, h.shape)), "x".join(map(str, fine_h.shape)),
    )
    return fine_h
