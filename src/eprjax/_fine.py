"""A PSF sampled like the data, brought onto a grid k times finer (for ``super_epr``).

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
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from ._arrays import like, to_jax
from ._errors import ParameterError
from ._operator import factor3


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

