"""preppsf: a measured bead image made into the PSF that the restoration needs.

Steps (DESIGN.md section 3): subtract the background (the median of the stack's border, or a
given value); find the bead's centre to sub-voxel precision (an intensity centroid in a
window set by the optics, re-centred until it settles); move that centre to the middle of a
symmetric sub-region (square in XY) by a Fourier shift, which does not blur; normalise; with
``mask``, remove what lies outside the optical transfer function's theoretical support; clip
negatives.

The widefield OTF support. The pupil is a cap of the sphere |k| = n / lambda (cycles/um)
within the aperture angle, sin a = NA / n; the OTF is its autocorrelation, so its support is
the set of differences of two cap points. With R = NA / lambda and k0 = n / lambda, at a
lateral frequency q (0 <= q <= 2R) the axial extent is

    |kz| <= sqrt(k0^2 - (R - q)^2) - sqrt(k0^2 - R^2),

zero at q = 0 (the missing cone) and at the lateral cut-off q = 2 NA / lambda. ``mask = s``
scales this region by s about the origin.
"""

from __future__ import annotations

import functools
import math
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float

from ._arrays import to_jax
from ._errors import ParameterError

NORMS = ("infocus", "total", "none")
DEFAULT_WAVELENGTH_UM = 0.52  # green emission (GFP, FITC, Alexa 488)
MASK_ITERATIONS = 100  # alternations between the OTF support and non-negativity
CORE = 0.1  # the centroid counts what stands above this fraction of the peak


class PreparedPSF(eqx.Module):
    """What `prepare_psf` returns.

    Attributes:
        value: the PSF, (Z, Y, X) float32, origin (the bead's centre) at index shape // 2.
        background: the background subtracted, per voxel.
        centre: the bead's centre found in the input, (z, y, x) voxels.
        shift: the shift applied, (z, y, x) voxels (from the input's indices to the output's).
        total: the PSF's sum after background subtraction, before normalisation.
        masked_fraction: the fraction of the PSF's energy (sum of squares) that lay outside
            the OTF support and was removed (0 without a mask).
    """

    value: Float[Array, "z y x"]
    background: Float[Array, ""]
    centre: tuple[float, float, float]
    shift: tuple[float, float, float]
    total: Float[Array, ""]
    masked_fraction: Float[Array, ""]


def otf_support(
    shape: tuple[int, int, int], *, na: float, n: float, wavelength_um: float, pixel_size_um: float,
    z_step_um: float, scale: float = 1.0,
) -> np.ndarray:
    """Boolean mask on the real-FFT grid of ``shape`` (Z, Y, X//2+1): True inside the
    widefield OTF support (module docstring), scaled by ``scale``."""
    kz = np.fft.fftfreq(shape[0], d=z_step_um)[:, None, None]
    ky = np.fft.fftfreq(shape[1], d=pixel_size_um)[None, :, None]
    kx = np.fft.rfftfreq(shape[2], d=pixel_size_um)[None, None, :]
    q = np.sqrt(kx**2 + ky**2) / scale
    kz = np.abs(kz) / scale
    radius, k0 = na / wavelength_um, n / wavelength_um
    extent = np.sqrt(np.maximum(k0**2 - (radius - q) ** 2, 0)) - math.sqrt(k0**2 - radius**2)
    tolerance = 1e-9
    return (q <= 2 * radius + tolerance) & (kz <= extent + tolerance)


def _border(x: np.ndarray, width: int) -> tuple[float, float]:
    """The median of the voxels within ``width`` of the stack's faces, and their robust
    standard deviation (1.4826 x the median absolute deviation)."""
    mask = np.ones(x.shape, bool)
    mask[tuple(slice(width, n - width) if n > 2 * width else slice(0, 0) for n in x.shape)] = False
    values = x[mask]
    middle = float(np.median(values))
    return middle, 1.4826 * float(np.median(np.abs(values - middle)))


def _smooth(x: np.ndarray, sigma: float = 1.0) -> np.ndarray:
    """A Gaussian blur of ``sigma`` voxels (for finding the peak in noise)."""
    spectrum = np.fft.rfftn(x)
    for axis, n in enumerate(x.shape):
        freq = np.fft.rfftfreq(n) if axis == 2 else np.fft.fftfreq(n)
        shape = [1, 1, 1]
        shape[axis] = len(freq)
        spectrum = spectrum * np.exp(-2 * (np.pi * sigma * freq.reshape(shape)) ** 2)
    return np.fft.irfftn(spectrum, s=x.shape, axes=(0, 1, 2))


def _shifted(spectrum, shape, shift, dtype) -> Float[Array, "z y x"]:
    """The array of real ``shape`` whose real FFT is ``spectrum``, moved by ``shift`` voxels
    (z, y, x; fractional allowed), periodically, by a phase ramp: no interpolation blur."""
    phase = 0.0
    for axis, (n, s) in enumerate(zip(shape, shift, strict=True)):
        freq = np.fft.rfftfreq(n) if axis == 2 else np.fft.fftfreq(n)
        ramp = [1, 1, 1]
        ramp[axis] = len(freq)
        phase = phase + jnp.asarray(freq.reshape(ramp), dtype) * s
    return jnp.fft.irfftn(spectrum * jnp.exp(-2j * jnp.pi * phase), s=shape)


def _fourier_shift(x: Float[Array, "z y x"], shift) -> Float[Array, "z y x"]:
    """``x`` moved by ``shift`` voxels (see `_shifted`)."""
    return _shifted(jnp.fft.rfftn(x), x.shape, shift, x.dtype)


def _centroid(x: np.ndarray, start: np.ndarray, radius: np.ndarray, steps: int = 30) -> np.ndarray:
    """The centroid of the bright core (above `CORE` of the peak) in a box of ``radius``
    about the current estimate, the box moved (by Fourier shifts of the data, so always
    symmetric about the estimate) until the estimate settles. Counting only the core keeps
    whatever background is left, and the noise of the dim voxels, out of it."""
    centre = start.astype(np.float64)
    grid = [np.arange(-r, r + 1, dtype=np.float64) for r in radius]
    spectrum = jnp.fft.rfftn(jnp.asarray(x))  # once: each step changes only the phase ramp
    for _ in range(steps):
        whole = np.round(centre).astype(int)
        moved = np.asarray(_shifted(spectrum, x.shape, whole - centre, x.dtype))
        box = moved[tuple(slice(c - r, c + r + 1) for c, r in zip(whole, radius, strict=True))]
        weights = np.maximum(box - CORE * box.max(), 0)
        total = weights.sum()
        if total <= 0:
            break
        offset = np.array([
            np.sum(weights * g.reshape([-1 if a == axis else 1 for a in range(3)])) / total
            for axis, g in enumerate(grid)
        ])
        new = centre + offset
        if np.max(np.abs(new - centre)) < 1e-4:
            return new
        centre = new
    return centre


@jax.jit
def _mask_and_clip(psf, support):
    """Alternate projections: the OTF support, then non-negativity; ending on the support
    keeps no energy outside it, and the negatives left are clipped by the caller."""

    def body(_, h):
        h = jnp.fft.irfftn(jnp.fft.rfftn(h) * support, s=h.shape)
        return jnp.maximum(h, 0)

    h = jax.lax.fori_loop(0, MASK_ITERATIONS, body, psf)
    return jnp.fft.irfftn(jnp.fft.rfftn(h) * support, s=h.shape)


def prepare_psf(
    bead: Any,
    *,
    na: float,
    n: float,
    pixel_size_um: float,
    z_step_um: float,
    wavelength_um: float = DEFAULT_WAVELENGTH_UM,
    norm: str = "infocus",
    mask: float | None = 1.0,
    size: tuple[int, int] | None = None,
    background: float | None = None,
    centre: tuple[float, float, float] | None = None,
) -> PreparedPSF:
    """Prepare a measured PSF (an image of one sub-resolution bead) for `restore`.

    Args:
        bead: the bead image, (Z, Y, X), any real dtype (NumPy, JAX, ...).
        na: the objective's numerical aperture (``-NA``).
        n: the immersion medium's refractive index (``-n``).
        pixel_size_um: the XY pixel size at the object, um (``-size``).
        z_step_um: the Z step, um (``-spaced``).
        wavelength_um: the emission wavelength, um (``-lambda``; default 0.52, green).
        norm: ``"infocus"`` (the centre plane sums to 1), ``"total"`` (the PSF sums to 1) or
            ``"none"``.
        mask: scale of the OTF support outside which the PSF's spectrum is removed
            (``-mask R``; 1, the default, is the theoretical support); None: no mask (the
            command line masks only when given -mask, as the original did).
        size: the sub-region (Z, XY), in voxels, odd; default: the largest symmetric region
            that fits around the bead.
        background: subtract this (per voxel) instead of the border's median.
        centre: the bead's centre (z, y, x) in voxels, instead of finding it.

    Returns:
        A `PreparedPSF`; ``.value`` has its origin at index shape // 2.

    Example:
        >>> psf = eprjax.prepare_psf(bead, na=1.4, n=1.515, pixel_size_um=0.187, z_step_um=0.25, mask=1)
        >>> psf.value.shape, psf.centre
    """
    for name, value in (("na", na), ("n", n), ("pixel_size_um", pixel_size_um), ("z_step_um", z_step_um), ("wavelength_um", wavelength_um)):
        if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
            raise ParameterError(f"{name} must be a positive number, got {value!r}")
    if na >= n:
        raise ParameterError(f"the numerical aperture ({na}) must be smaller than the immersion index ({n})")
    if norm not in NORMS:
        raise ParameterError(f"norm must be one of {', '.join(NORMS)}, got {norm!r}")
    if mask is not None and not (math.isfinite(mask) and mask > 0):
        raise ParameterError(f"mask must be a positive scale of the OTF support, got {mask!r}")
    data = to_jax(bead, "bead").astype(jnp.float32)
    if data.ndim != 3:
        raise ParameterError(f"the bead image must be (Z, Y, X), got shape {tuple(data.shape)}")
    traced = isinstance(data, jax.core.Tracer)
    if traced and (background is None or centre is None):
        raise ParameterError("to differentiate, give the background and the centre (they are found from concrete data)")
    x = None if traced else np.asarray(data)
    if x is not None and not np.all(np.isfinite(x)):
        raise ParameterError("the bead image holds NaN or infinite values")
    if x is not None:
        bg, sigma = _border(x, max(2, min(x.shape) // 10))
        if background is not None:
            bg = float(background)
        x = x - np.float32(bg)
        smooth = _smooth(x)
        if not smooth.max() > 5 * sigma / 3 and not (sigma == 0 and smooth.max() > 0):
            raise ParameterError(f"no bead: nothing stands above the background ({bg:.4g} +- {sigma:.3g})")
    else:
        bg = float(background)  # type: ignore[arg-type]
    # the search window: twice the Airy radius laterally, twice the axial half-width
    lateral = max(2, math.ceil(2 * 0.61 * wavelength_um / na / pixel_size_um))
    axial = max(2, math.ceil(2 * n * wavelength_um / na**2 / z_step_um))
    radius = np.array([axial, lateral, lateral])
    shape = np.array(data.shape)
    if centre is None:
        peak = np.array(np.unravel_index(np.argmax(smooth), shape))
        if np.any(peak - radius < 0) or np.any(peak + radius >= shape):
            raise ParameterError(
                f"the bead (brightest at z {peak[0]}, y {peak[1]}, x {peak[2]}) is too close to the edge to centre"
            )
        found = _centroid(x, peak, radius)
    else:
        found = np.asarray(centre, dtype=np.float64)
        if found.shape != (3,):
            raise ParameterError(f"centre must be (z, y, x), got {centre!r}")
    # the largest symmetric sub-region that fits, or the one asked for
    room = np.floor(np.minimum(found, shape - 1 - found)).astype(int)
    half_z, half_xy = int(room[0]), int(min(room[1], room[2]))
    if size is not None:
        want_z, want_xy = (int(v) // 2 for v in size)
        if want_z > half_z or want_xy > half_xy:
            raise ParameterError(
                f"a {size[0]} x {size[1]} x {size[1]} sub-region does not fit around the bead at "
                f"z {found[0]:.2f}, y {found[1]:.2f}, x {found[2]:.2f} in a {tuple(shape)} stack "
                f"(at most {2 * half_z + 1} x {2 * half_xy + 1})"
            )
        half_z, half_xy = want_z, want_xy
    if half_z < 1 or half_xy < 2:
        raise ParameterError(f"the bead is too close to the edge: no sub-region fits around it ({found})")
    whole = np.round(found).astype(int)
    corner = (int(whole[0] - half_z), int(whole[1] - half_xy), int(whole[2] - half_xy))
    size3 = (2 * half_z + 1, 2 * half_xy + 1, 2 * half_xy + 1)
    support = None
    if mask is not None:
        support = jnp.asarray(
            otf_support(size3, na=na, n=n, wavelength_um=wavelength_um, pixel_size_um=pixel_size_um,
                        z_step_um=z_step_um, scale=mask),
            jnp.float32,
        )
    cut, total, plane, masked = _extract(data, jnp.float32(bg), jnp.asarray(found - whole, jnp.float32), support, corner=corner, size=size3, norm=norm)
    if not traced and norm == "infocus" and not float(plane) > 0:
        raise ParameterError("the in-focus plane holds no light; use -norm total")
    shift = tuple(float(v) for v in np.array(size3) // 2 - found)  # input index + shift = output index
    return PreparedPSF(
        value=cut,
        background=jnp.asarray(bg, jnp.float32),
        centre=tuple(float(v) for v in found),
        shift=shift,
        total=total,
        masked_fraction=masked,
    )


@functools.partial(jax.jit, static_argnames=("corner", "size", "norm"))
def _extract(data, bg, frac, support, *, corner, size, norm):
    """Background off, the centre moved by the fraction of a voxel, the sub-region cut, the
    OTF support imposed (``support`` not None), negatives clipped, normalised; also the sum
    before normalisation, the in-focus plane's sum, and the fraction of energy masked."""
    moved = _fourier_shift(data - bg, -frac)
    cut = jax.lax.dynamic_slice(moved, corner, size)
    total = jnp.sum(cut)
    masked = jnp.zeros((), cut.dtype)
    if support is not None:
        energy = jnp.sum(cut * cut)
        inside = jnp.fft.irfftn(jnp.fft.rfftn(cut) * support, s=cut.shape)
        masked = 1 - jnp.sum(inside * inside) / jnp.maximum(energy, jnp.finfo(cut.dtype).tiny)
        cut = _mask_and_clip(cut, support)
    cut = jnp.maximum(cut, 0)
    plane = jnp.sum(cut[cut.shape[0] // 2])
    if norm == "infocus":
        cut = cut / plane
    elif norm == "total":
        cut = cut / jnp.sum(cut)
    return cut.astype(jnp.float32), total, plane, masked
