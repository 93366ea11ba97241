"""A PSF brought to another sampling: onto a grid k times finer (``super_epr``), or to the
data's voxel size when the bead was taken at another (``resample_psf``).

Band-limited (Fourier) interpolation: the PSF's spectrum, its origin at index 0, is padded
with zeros to the finer grid (an even length's Nyquist term split between the two new
halves, so the result stays real), then transformed back; nothing is invented beyond the
frequencies the samples hold.

A camera pixel integrates the light over its area, so a PSF measured with the data's pixels
is the optical PSF blurred by one coarse pixel, while the model (a sum over k x k fine
pixels, `bin_blocks`) wants it blurred by one fine pixel only. With ``pixel=True`` the
spectrum is multiplied, along Y and X, by sinc(f / k) / sinc(f) (f in cycles per coarse
pixel, |f| <= 1/2, where sinc(f) >= 2/pi): the coarse pixel's blur is swapped for the fine
one's, stably. Along Z a focus series samples planes rather than integrating between them,
so there is no such correction there.

The result keeps the PSF's total (a block of k x k fine voxels then sums to about what one
coarse voxel held), has its origin at index shape // 2 of the finer grid, and is clipped at
zero (interpolation rings slightly where the PSF falls steeply).
"""

from __future__ import annotations

import functools
import logging
import math
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from ._arrays import like, to_jax
from ._errors import ParameterError
from ._image import Image
from ._operator import factor3

log = logging.getLogger("eprjax")


def _pad_spectrum(spectrum, axis: int, size: int):
    """A full-FFT ``spectrum`` along ``axis`` zero-padded to ``size`` frequencies."""
    n = spectrum.shape[axis]
    if size == n:
        return spectrum
    take = functools.partial(jnp.take, axis=axis)
    low = take(spectrum, jnp.arange((n + 1) // 2))  # frequencies 0 .. (n-1)//2
    high = take(spectrum, jnp.arange((n + 1) // 2, n))  # the negative ones (first: Nyquist if n even)
    zeros_shape = list(spectrum.shape)
    if n % 2:
        zeros_shape[axis] = size - n
        return jnp.concatenate([low, jnp.zeros(zeros_shape, spectrum.dtype), high], axis=axis)
    nyquist = take(high, jnp.arange(1)) / 2
    zeros_shape[axis] = size - n - 1
    rest = take(high, jnp.arange(1, n // 2))
    return jnp.concatenate([low, nyquist, jnp.zeros(zeros_shape, spectrum.dtype), nyquist, rest], axis=axis)


@functools.partial(jax.jit, static_argnames=("factor", "pixel"))
def _fine(psf, *, factor: tuple[int, int, int], pixel: bool):
    spectrum = jnp.fft.fftn(jnp.fft.ifftshift(psf).astype(jnp.complex64 if psf.dtype == jnp.float32 else jnp.complex128))
    for axis, k in enumerate(factor):
        n = psf.shape[axis]
        if k == 1:
            continue
        if pixel and axis > 0:
            f = np.fft.fftfreq(n)
            ratio = np.sinc(f / k) / np.sinc(f)
            shape = [1, 1, 1]
            shape[axis] = n
            spectrum = spectrum * jnp.asarray(ratio.reshape(shape), psf.dtype)
        spectrum = _pad_spectrum(spectrum, axis, n * k)
    fine = jnp.fft.fftshift(jnp.real(jnp.fft.ifftn(spectrum)).astype(psf.dtype))
    clipped = jnp.maximum(fine, 0)
    return clipped * (jnp.sum(psf) / jnp.sum(clipped))


def fine_psf(psf: Any, factor: int | Sequence[int] = 2, *, pixel: bool = True) -> Any:
    """The PSF ``psf`` (Z, Y, X; origin at index shape // 2; sampled like the data) on a grid
    ``factor`` times finer, for `restore` with the same ``factor``.

    Args:
        psf: the PSF on the data's sampling (as preppsf writes it).
        factor: an int for Y and X (Z kept), or (z, y, x) ints >= 1.
        pixel: swap the coarse pixel's integration, which the measured PSF holds, for the
            fine pixel's (see the module's notes); False for a PSF computed at points.

    Returns:
        The fine PSF, (Z kz, Y ky, X kx): same total, non-negative, origin at index shape // 2; the caller's kind of array; differentiable in ``psf``.
    """
    h = to_jax(psf, "psf")
    if h.ndim != 3:
        raise ParameterError(f"the PSF must have axes (Z, Y, X), got shape {tuple(h.shape)}")
    if not jnp.issubdtype(h.dtype, jnp.floating):
        h = h.astype(jnp.float32)
    k = factor3(factor)
    if k == (1, 1, 1):
        return psf
    return like(_fine(h, factor=k, pixel=bool(pixel)), psf)


def fine_voxel_size(
    voxel_size_um: Sequence[float | None], factor: Sequence[int]
) -> tuple[float | None, float | None, float | None]:
    """The voxel size (z, y, x) of a grid ``factor`` times finer (None stays None)."""
    return tuple(None if v is None else v / k for v, k in zip(voxel_size_um, factor, strict=True))  # type: ignore[return-value]



def _axis_matrix(n_in: int, step_in: float, n_out: int, step_out: float, pixel: bool) -> np.ndarray:
    """(n_out, n_in): samples at ``step_in`` (origin at index n_in // 2) to samples at
    ``step_out`` (origin at n_out // 2) by trigonometric (band-limited) interpolation; the
    input's Nyquist term, whose phase the samples do not fix, is left out. With ``pixel``,
    the input pixel's integration is swapped for the output pixel's (sinc(k step_out) /
    sinc(k step_in), and the values scaled by step_out / step_in so that the sum is kept)."""
    k = np.fft.fftfreq(n_in, d=step_in)  # cycles per um
    weight = np.ones(n_in)
    if n_in % 2 == 0:
        weight[n_in // 2] = 0.0
    if pixel:
        weight = weight * np.sinc(k * step_out) / np.sinc(k * step_in) * (step_out / step_in)
    x_in = (np.arange(n_in) - n_in // 2) * step_in
    x_out = (np.arange(n_out) - n_out // 2) * step_out
    forward = np.exp(-2j * np.pi * np.outer(k, x_in)) / n_in
    evaluate = np.exp(2j * np.pi * np.outer(x_out, k))
    return np.real(evaluate @ (weight[:, None] * forward))


def resampled_shape(shape: Sequence[int], voxel_in: Sequence[float], voxel_out: Sequence[float]) -> tuple[int, int, int]:
    """The odd shape on the new sampling that covers the same extent about the origin."""
    return tuple(2 * int(math.floor((n // 2) * a / b + 1e-6)) + 1 for n, a, b in zip(shape, voxel_in, voxel_out, strict=True))  # type: ignore[return-value]


def resample_psf(
    psf: Any, voxel_size_um: Sequence[float], voxel_size_out_um: Sequence[float], *, shape: Sequence[int] | None = None
) -> Any:
    """The PSF ``psf`` (Z, Y, X; origin at index shape // 2; sampled at ``voxel_size_um``,
    z, y, x) on the sampling ``voxel_size_out_um``, in either direction along any axis.

    Band-limited resampling: the trigonometric interpolant of the samples, evaluated at the
    new points, exact for a PSF sampled finer than its Nyquist limit. Along Y and X a camera
    pixel integrates the light over its area, so the input pixel's integration is swapped for
    the output's (sinc ratio) and the total is kept: a pixel twice as wide holds the light of
    four. Along Z a focus series samples planes, not slabs: values are kept, so the total
    scales with the planes (normalise afterwards). Nothing is low-passed: where the new
    sampling is coarser than the PSF's bandwidth, the result aliases exactly as an
    acquisition at that sampling would.

    Args:
        psf: the PSF, a real array.
        voxel_size_um: its (z, y, x) voxel size, um.
        voxel_size_out_um: the (z, y, x) voxel size wanted, um.
        shape: the output's (Z, Y, X); default: odd, covering the same extent.

    Returns:
        The resampled PSF, origin at index shape // 2; the caller's kind of array;
        differentiable in ``psf``. Negative ringing is not clipped.

    Example:
        >>> h03 = eprjax.resample_psf(h01, (0.1, 0.1, 0.1), (0.3, 0.1, 0.1))
    """
    h = to_jax(psf, "psf")
    if h.ndim != 3:
        raise ParameterError(f"the PSF must have axes (Z, Y, X), got shape {tuple(h.shape)}")
    if not jnp.issubdtype(h.dtype, jnp.floating):
        h = h.astype(jnp.float32)
    for name, v in (("voxel_size_um", voxel_size_um), ("voxel_size_out_um", voxel_size_out_um)):
        if len(tuple(v)) != 3 or not all(math.isfinite(float(a)) and float(a) > 0 for a in v):
            raise ParameterError(f"{name} must be three positive sizes (z, y, x) in um, got {tuple(v)!r}")
    voxel_in = tuple(float(v) for v in voxel_size_um)
    voxel_out = tuple(float(v) for v in voxel_size_out_um)
    out_shape = resampled_shape(h.shape, voxel_in, voxel_out) if shape is None else tuple(int(n) for n in shape)
    if len(out_shape) != 3 or min(out_shape) < 1:
        raise ParameterError(f"shape must be three sizes >= 1, got {shape!r}")
    out = h
    for axis in range(3):
        if voxel_in[axis] == voxel_out[axis] and out_shape[axis] == h.shape[axis]:
            continue
        matrix = jnp.asarray(_axis_matrix(h.shape[axis], voxel_in[axis], out_shape[axis], voxel_out[axis], axis > 0), h.dtype)
        out = jnp.moveaxis(jnp.tensordot(matrix, jnp.moveaxis(out, axis, 0), axes=(1, 0)), 0, axis)
    return like(out, psf)


VOXEL_TOLERANCE = 0.01  # PSF and data voxel sizes may differ by this fraction
NYQUIST_SHARE = 0.01  # a PSF coarser than the data: refused when more of its energy than this
NYQUIST_BAND = 0.4  # ... lies above this many cycles per voxel (the top fifth of its band)


def voxel_text(voxel) -> str:
    """(z, y, x) um as text, "?" where unknown."""
    return " x ".join("?" if v is None else f"{v:.4g}" for v in voxel)


def _too_coarse(h: np.ndarray, axis: int) -> float:
    """The share of ``h``'s energy above `NYQUIST_BAND` cycles per voxel along ``axis``: a
    PSF sampled at its Nyquist limit or coarser holds much there, one sampled finer nearly
    none."""
    power = np.abs(np.fft.fftn(np.asarray(h, np.float64))) ** 2
    f = np.abs(np.fft.fftfreq(h.shape[axis]))
    profile = power.sum(axis=tuple(a for a in range(3) if a != axis))
    return float(profile[f > NYQUIST_BAND].sum() / max(profile.sum(), 1e-300))


def psf_on_object_grid(
    data: Image, psf: Image, h: np.ndarray, factor: tuple[int, int, int], psf_name: str, data_name: str = "the data",
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
            data_name, ", ".join(unsaid), voxel_text(psf.voxel_size_um),
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
                    raise ParameterError(
                        f"{psf_name}: the PSF is sampled at {b:.4g} um along {'zyx'[axis]}, coarser than the {w:.4g} um "
                        f"needed, and holds light up to its own sampling limit ({100 * share:.1f}% of its energy in the top fifth "
                        "of its band): resampling would invent detail; measure or compute the PSF at the data's sampling"
                    )
        resampled = np.maximum(np.asarray(resample_psf(h, voxel_in, voxel_out)), 0)
        log.info(
            "the PSF (%s um, %s) brought to the %s sampling (%s um) by band-limited resampling: %s",
            voxel_text(voxel_in), "x".join(map(str, h.shape)), "data's" if factor == (1, 1, 1) else "restoration grid's",
            voxel_text(voxel_out), "x".join(map(str, resampled.shape)),
        )
        return resampled.astype(np.float32)
    if steps == [1, 1, 1]:
        return h
    fine_h = np.asarray(fine_psf(h, tuple(steps)))
    log.info(
        "the PSF, sampled like the data, brought onto the %dx%dx%d finer grid by band-limited interpolation: %s -> %s "
        "(it holds no detail finer than the data's sampling; a PSF measured or computed on the fine grid resolves more)",
        *factor, "x".join(map(str, h.shape)), "x".join(map(str, fine_h.shape)),
    )
    return fine_h
