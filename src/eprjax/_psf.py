"""preppsf: measured bead images made into the PSF that the restoration needs.

Steps (DESIGN.md section 3): the background, per plane, and the noise are estimated from
the stack (`_distill`); the bead (or several, in one stack or in several) is found and its
centre located to sub-voxel precision (an intensity centroid of its bright core in a window
set by the optics, re-centred until it settles); each bead is moved by a Fourier shift (which
does not blur) so that its centre falls on the middle voxel of a symmetric sub-region, square
in XY, and the beads are summed; the bead's light is separated from the noise floor by the
multiresolution support (`_distill`); the box is cut to where that light ends; optionally
averaged over rings about the optical axis; with ``mask``, what lies outside the optical
transfer function's theoretical support for the modality is removed; the PSF is brought to
the data's sampling when asked (`resample_psf`); negatives clipped; normalised.

The OTF supports (``modality``). Widefield: the pupil is a cap of the sphere |k| = n / lambda
(cycles/um) within the aperture angle, sin a = NA / n; the OTF is its autocorrelation, so its
support is the set of differences of two cap points. With R = NA / lambda and k0 = n / lambda,
at a lateral frequency q (0 <= q <= 2R) the axial extent is

    |kz| <= sqrt(k0^2 - (R - q)^2) - sqrt(k0^2 - R^2),

zero at q = 0 (the missing cone) and at the lateral cut-off q = 2 NA / lambda. Confocal (the
ideal, small pinhole): the PSF is the excitation PSF times the detection PSF, so the OTF is
the convolution of the two OTFs and its support the (Minkowski) sum of the two widefield
supports, at the excitation and the emission wavelengths: twice as wide laterally and no
missing cone. A larger pinhole only narrows it, so the mask stays safe. Light sheet: the PSF
is the detection PSF times the sheet's intensity profile along the detection axis; that
profile is the square of a field focused at the illumination NA, so its axial frequencies
reach 2 NA_sheet / lambda_ex, and the support is the widefield one widened along kz by that
much. ``mask = s`` scales the region by s about the origin (as dividing every wavelength by s).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float
from scipy import ndimage

from . import _distill
from ._arrays import to_jax
from ._errors import ParameterError
from ._fine import resample_psf

NORMS = ("infocus", "total", "none")
MODALITIES = ("widefield", "confocal", "lightsheet")
DEFAULT_WAVELENGTH_UM = 0.52  # green emission (GFP, FITC, Alexa 488)
MASK_ITERATIONS = 100  # alternations between the OTF support and non-negativity
CORE = 0.1  # the centroid counts what stands above this fraction of the peak
BOX_MARGIN = 2  # voxels kept beyond the bead's light on each side of the default box
WARN_TAILS = 0.5  # warn when more of the PSF's sum than this lies outside the bead's core
WARN_OUTSIDE = 0.05  # warn when more of the PSF's energy than this lies outside the OTF support
REFUSE_MASK = 0.3  # -mask refuses to remove more of the energy than this


class PreparedPSF(eqx.Module):
    """What `prepare_psf` returns: the PSF and the report on how it was made.

    Attributes:
        value: the PSF, (Z, Y, X) float32, origin (the bead's centre) at index shape // 2.
        voxel_size_um: (z, y, x) of ``value``: the bead's, or the one asked for.
        background: the background subtracted, per voxel (the mean over planes).
        background_range: its lowest and highest plane's values.
        noise: the noise's standard deviation in the (first) bead stack, per voxel.
        peak_snr: the brightest voxel of the (summed) beads over their noise.
        centre: the (first) bead's centre found in its stack, (z, y, x) voxels.
        centres: every bead's centre, (stack index, z, y, x).
        shift: the shift applied to the first bead, (z, y, x) voxels (input index + shift =
            output index, on the bead's sampling).
        total: the PSF's sum before normalisation (the beads' light, counts).
        fwhm_um: full width at half maximum (z, y, x), um, on the bead's sampling.
        tail_fraction: the share of the PSF's sum outside the bead's bright core (where the
            raw beads, smoothed by one voxel, stand 5 noise sigmas out).
        outside_support: the share of the PSF's energy (sum of squares) outside the OTF
            support of the modality, before any mask.
        masked_fraction: the share of the energy the mask removed (0 without a mask).
        warnings: what looks wrong, one sentence each.
    """

    value: Float[Array, "z y x"]
    voxel_size_um: tuple[float, float, float]
    background: Float[Array, ""]
    background_range: tuple[float, float]
    noise: float
    peak_snr: float
    centre: tuple[float, float, float]
    centres: tuple[tuple[int, float, float, float], ...]
    shift: tuple[float, float, float]
    total: Float[Array, ""]
    fwhm_um: tuple[float, float, float]
    tail_fraction: float
    outside_support: float
    masked_fraction: Float[Array, ""]
    warnings: tuple[str, ...]

    def report(self, *, lightsheet: bool = False) -> list[str]:
        """The preparation report, one line each (preppsf -V prints it; the warnings apart):
        background and noise, the bead centre(s) and the shift, peak SNR and total, FWHM,
        the light in the tails and outside the OTF support (``lightsheet``: say that the
        support is unknown where no sheet NA was given)."""
        lo, hi = self.background_range
        planes = "" if hi - lo < 0.01 else f" (planes {lo:.4g} to {hi:.4g})"
        lines = [f"background {float(self.background):.4g} per voxel{planes}; noise sigma {self.noise:.3g}"]
        sz, sy, sx = self.shift
        for number, (index, cz, cy, cx) in enumerate(self.centres):
            where = f" (image {index + 1})" if self.centres[-1][0] > 0 else ""
            moved = f"; shifted by x {sx:.3f}, y {sy:.3f}, z {sz:.3f}" if number == 0 else ""
            lines.append(f"bead centre x {cx:.3f}, y {cy:.3f}, z {cz:.3f} (voxels){where}{moved}")
        lines.append(f"peak signal-to-noise {self.peak_snr:.0f}; sum after background subtraction, before normalisation: {float(self.total):.6g}")
        fz, fy, fx = self.fwhm_um
        lines.append(f"FWHM x {fx:.3f}, y {fy:.3f}, z {fz:.3f} um")
        lines.append(f"outside the bead's bright core: {100 * self.tail_fraction:.1f}% of the PSF's light")
        if not math.isnan(self.outside_support):
            lines.append(f"outside the OTF support: {100 * self.outside_support:.2f}% of the energy")
        elif lightsheet:
            lines.append("outside the OTF support: not known without -sheet_NA")
        return lines


def _widefield_support(shape, kz, q, *, na: float, n: float, wavelength_um: float) -> np.ndarray:
    radius, k0 = na / wavelength_um, n / wavelength_um
    extent = np.sqrt(np.maximum(k0**2 - (radius - q) ** 2, 0)) - math.sqrt(k0**2 - radius**2)
    tolerance = 1e-9
    return np.broadcast_to((q <= 2 * radius + tolerance) & (np.abs(kz) <= extent + tolerance), shape)


def otf_support(
    shape: tuple[int, int, int], *, na: float, n: float, wavelength_um: float, pixel_size_um: float,
    z_step_um: float, scale: float = 1.0, modality: str = "widefield", excitation_um: float | None = None,
    sheet_na: float | None = None,
) -> np.ndarray:
    """Boolean mask on the real-FFT grid of ``shape`` (Z, Y, X//2+1): True inside the OTF's
    theoretical support for ``modality`` (module docstring), scaled by ``scale``.

    Args:
        modality: ``"widefield"``, ``"confocal"`` (ideal pinhole: excitation and emission
            supports summed) or ``"lightsheet"`` (the widefield support widened along kz by
            the sheet's axial frequencies, 2 ``sheet_na`` / ``excitation_um``).
        excitation_um: the excitation wavelength (confocal, light sheet); default the emission's.
        sheet_na: the light sheet's illumination NA (required for ``"lightsheet"``).
    """
    if modality not in MODALITIES:
        raise ParameterError(f"modality must be one of {', '.join(MODALITIES)}, got {modality!r}")
    excitation = (excitation_um if excitation_um is not None else wavelength_um) / scale
    emission = wavelength_um / scale
    rshape = (shape[0], shape[1], shape[2] // 2 + 1)
    kz = np.fft.fftfreq(shape[0], d=z_step_um)[:, None, None]
    ky = np.fft.fftfreq(shape[1], d=pixel_size_um)[None, :, None]
    kx = np.fft.rfftfreq(shape[2], d=pixel_size_um)[None, None, :]
    q = np.sqrt(kx**2 + ky**2)
    detection = _widefield_support(rshape, kz, q, na=na, n=n, wavelength_um=emission)
    if modality == "widefield":
        return np.array(detection)
    if modality == "lightsheet":
        if sheet_na is None or not (math.isfinite(sheet_na) and 0 < sheet_na < n):
            raise ParameterError(f"a light-sheet OTF support needs the sheet's illumination NA (0 < sheet_na < n), got {sheet_na!r}")
        reach = 2 * sheet_na / excitation  # cycles/um along kz
        bins = int(math.floor(reach * shape[0] * z_step_um + 1e-9))
        widened = ndimage.maximum_filter1d(detection.astype(np.uint8), size=min(2 * bins + 1, 2 * shape[0] + 1), axis=0, mode="wrap")
        return widened.astype(bool)
    # confocal: the Minkowski sum of the two supports, by a linear convolution of their
    # indicators on a grid of twice the frequencies (so nothing wraps), back on this grid
    full_q = np.sqrt(np.fft.fftfreq(shape[2], d=pixel_size_um)[None, None, :] ** 2 + ky**2)
    big = tuple(2 * m for m in shape)

    def indicator(wavelength):
        on = _widefield_support(tuple(shape), kz, full_q, na=na, n=n, wavelength_um=wavelength).astype(np.float64)
        out = np.zeros(big)
        index = np.ix_(*[np.fft.fftfreq(m, d=1 / m).astype(int) % (2 * m) for m in shape])
        out[index] = on
        return np.fft.fftn(out)

    summed = np.real(np.fft.ifftn(indicator(emission) * indicator(excitation))) > 0.5
    back = np.ix_(*[np.fft.fftfreq(m, d=1 / m).astype(int) % (2 * m) for m in shape])
    return summed[back][..., : shape[2] // 2 + 1]


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


def _outside(h, support) -> Float[Array, ""]:
    """The share of ``h``'s energy (Parseval: of its spectrum's) outside ``support``."""
    h = jnp.asarray(h, jnp.float32)
    energy = jnp.sum(h * h)
    inside = jnp.fft.irfftn(jnp.fft.rfftn(h) * support, s=h.shape)
    return 1 - jnp.sum(inside * inside) / jnp.maximum(energy, jnp.finfo(h.dtype).tiny)


@functools.partial(jax.jit, static_argnames=("corner", "size"))
def _cut(data, frac, *, corner, size):
    """``data`` moved by minus the fraction of a voxel ``frac``, the sub-region cut."""
    return jax.lax.dynamic_slice(_fourier_shift(data, -frac), corner, size)


@functools.partial(jax.jit, static_argnames=("norm",))
def _finish(cut, support, *, norm):
    """The OTF support imposed (``support`` not None), negatives clipped, normalised; also
    the sum before normalisation, the in-focus plane's sum and the share of energy masked."""
    total = jnp.sum(cut)
    masked = jnp.zeros((), cut.dtype)
    if support is not None:
        masked = _outside(cut, support)
        cut = _mask_and_clip(cut, support)
    cut = jnp.maximum(cut, 0)
    plane = jnp.sum(cut[cut.shape[0] // 2])
    if norm == "infocus":
        cut = cut / plane
    elif norm == "total":
        cut = cut / jnp.sum(cut)
    return cut.astype(jnp.float32), total, plane, masked


def _positive(name: str, value: Any) -> None:
    if not (isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value > 0):
        raise ParameterError(f"{name} must be a positive number, got {value!r}")


def _window(na: float, n: float, wavelength_um: float, pixel_size_um: float, z_step_um: float) -> np.ndarray:
    """The centroid's search half-window (z, y, x voxels): twice the Airy radius laterally,
    twice the axial half-width."""
    lateral = max(2, math.ceil(2 * 0.61 * wavelength_um / na / pixel_size_um))
    axial = max(2, math.ceil(2 * n * wavelength_um / na**2 / z_step_um))
    return np.array([axial, lateral, lateral])


def prepare_psf(
    bead: Any,
    *,
    na: float,
    n: float,
    pixel_size_um: float,
    z_step_um: float,
    wavelength_um: float = DEFAULT_WAVELENGTH_UM,
    norm: str = "infocus",
    mask: float | None = None,
    modality: str = "widefield",
    excitation_um: float | None = None,
    sheet_na: float | None = None,
    size: tuple[int, int] | None = None,
    background: float | None = None,
    centre: tuple[float, float, float] | None = None,
    beads: int = 1,
    distill: bool = True,
    radial: bool = False,
    voxel_size_out_um: Sequence[float] | None = None,
) -> PreparedPSF:
    """Prepare a measured PSF (images of sub-resolution beads) for `restore`.

    Args:
        bead: the bead image, (Z, Y, X), any real dtype (NumPy, JAX, ...); or a list of such
            stacks, all on the same sampling, whose beads are averaged.
        na: the objective's (detection) numerical aperture (``-NA``).
        n: the immersion medium's refractive index (``-n``).
        pixel_size_um: the XY pixel size at the object, um (``-size``).
        z_step_um: the Z step, um (``-spaced``).
        wavelength_um: the emission wavelength, um (``-lambda``; default 0.52, green).
        norm: ``"infocus"`` (the centre plane sums to 1), ``"total"`` (the PSF sums to 1) or
            ``"none"`` (the beads' light, in counts).
        mask: scale of the OTF support outside which the PSF's spectrum is removed
            (``-mask R``; 1 is the theoretical support); None (the default, as the original):
            no mask. Refused when it would remove more than 30 % of the energy.
        modality: ``"widefield"``, ``"confocal"`` or ``"lightsheet"``: which OTF support the
            mask and the report use (see `otf_support`).
        excitation_um: confocal and light sheet: the excitation wavelength (default: the
            emission's).
        sheet_na: light sheet: the illumination NA that forms the sheet.
        size: the sub-region (Z, XY), in voxels, odd; default: where the bead's light ends,
            plus 2 voxels (the largest box that fits, without distilling).
        background: subtract this (per voxel) instead of the per-plane estimate.
        centre: the bead's centre (z, y, x) in voxels, instead of finding it (one bead).
        beads: how many beads to find in each stack and average (brightest first, each at
            least two search windows from the others).
        distill: separate the bead's light from the noise floor (module docstring); False:
            keep every voxel, negatives clipped (the original's way; the only way when
            differentiating through this function).
        radial: average the PSF over rings about the optical axis (aberration-free,
            rotationally symmetric optics).
        voxel_size_out_um: (z, y, x): bring the PSF to this sampling (the data's), by
            band-limited resampling with the camera pixel's integration swapped (see
            `resample_psf`).

    Returns:
        A `PreparedPSF`; ``.value`` has its origin at index shape // 2.

    Example:
        >>> psf = eprjax.prepare_psf(bead, na=1.4, n=1.515, pixel_size_um=0.187, z_step_um=0.25)
        >>> psf.value.shape, psf.fwhm_um, psf.tail_fraction
    """
    for name, value in (("na", na), ("n", n), ("pixel_size_um", pixel_size_um), ("z_step_um", z_step_um), ("wavelength_um", wavelength_um)):
        _positive(name, value)
    if excitation_um is not None:
        _positive("excitation_um", excitation_um)
    if na >= n:
        raise ParameterError(f"the numerical aperture ({na}) must be smaller than the immersion index ({n})")
    if norm not in NORMS:
        raise ParameterError(f"norm must be one of {', '.join(NORMS)}, got {norm!r}")
    if modality not in MODALITIES:
        raise ParameterError(f"modality must be one of {', '.join(MODALITIES)}, got {modality!r}")
    if modality == "lightsheet" and sheet_na is not None:
        _positive("sheet_na", sheet_na)
    if mask is not None and not (math.isfinite(mask) and mask > 0):
        raise ParameterError(f"mask must be a positive scale of the OTF support, got {mask!r}")
    if mask is not None and modality == "lightsheet" and sheet_na is None:
        raise ParameterError("a light-sheet mask needs the sheet's illumination NA (sheet_na, -sheet_NA)")
    if not (isinstance(beads, (int, np.integer)) and beads >= 1):
        raise ParameterError(f"beads must be an integer >= 1, got {beads!r}")
    stacks = [to_jax(b, "bead").astype(jnp.float32) for b in (bead if isinstance(bead, (list, tuple)) else [bead])]
    if not stacks:
        raise ParameterError("no bead image given")
    for s in stacks:
        if s.ndim != 3:
            raise ParameterError(f"the bead image must be (Z, Y, X), got shape {tuple(s.shape)}")
        if s.shape != stacks[0].shape:
            raise ParameterError(f"the bead stacks differ in shape: {tuple(stacks[0].shape)} and {tuple(s.shape)}")
    if centre is not None and (len(stacks) > 1 or beads > 1):
        raise ParameterError("centre can be given for one bead in one stack only")
    voxel = (float(z_step_um), float(pixel_size_um), float(pixel_size_um))
    out_voxel = None
    if voxel_size_out_um is not None:
        out_voxel = tuple(float(v) for v in voxel_size_out_um)
        if len(out_voxel) != 3:
            raise ParameterError(f"voxel_size_out_um must be (z, y, x), got {voxel_size_out_um!r}")
        for axis, v in zip("zyx", out_voxel, strict=True):
            _positive(f"voxel_size_out_um ({axis})", v)
    support_kw = dict(na=na, n=n, wavelength_um=wavelength_um, pixel_size_um=pixel_size_um, z_step_um=z_step_um,
                      modality=modality, excitation_um=excitation_um, sheet_na=sheet_na)
    traced = any(isinstance(s, jax.core.Tracer) for s in stacks)
    if traced:
        return _prepare_traced(stacks[0], background, centre, size, mask, norm, support_kw, voxel, distill)
    radius = _window(na, n, wavelength_um, pixel_size_um, z_step_um)
    warnings: list[str] = []

    # every stack: its background per plane, its noise, its beads and their centres
    found: list[tuple[np.ndarray, np.ndarray, float]] = []  # (stack minus background, bead centre, noise)
    levels, listed = [], []
    for index, s in enumerate(stacks):
        y, level, sigma, centres = _beads_in(np.asarray(s), index, background, centre, beads, radius, warnings)
        found += [(y, c, sigma) for c in centres]
        listed += [(index, *(float(v) for v in c)) for c in centres]
        levels.append(level)
    _saturation(bead, warnings)
    room_z, room_xy = _room(found, size)
    crop = (2 * room_z + 1, 2 * room_xy + 1, 2 * room_xy + 1)
    summed = np.zeros(crop, np.float32)
    for y, c, _ in found:
        whole = np.round(c).astype(int)
        corner = (int(whole[0] - room_z), int(whole[1] - room_xy), int(whole[2] - room_xy))
        summed += np.asarray(_cut(jnp.asarray(y), jnp.asarray(c - whole, jnp.float32), corner=corner, size=crop))
    sigma = float(math.sqrt(sum(n * n for *_, n in found)))  # the sum's noise
    peak_snr = float(summed.max() / sigma) if sigma > 0 else math.inf
    middle = tuple(m // 2 for m in crop)

    # the bead's light apart from the noise; the box where it ends
    raw_core = _distill.core(summed, sigma, [middle])
    if distill:
        distilled = _distill.distill(summed, sigma)
        light, reach = distilled.value, ndimage.binary_dilation(distilled.support, iterations=2)
    else:
        light, reach = np.maximum(summed, 0), None
    half_z, half_xy = room_z, room_xy
    if size is not None:
        half_z, half_xy = (int(v) // 2 for v in size)
    elif reach is not None and reach.any():
        where = np.argwhere(reach) - np.array(middle)
        half_z = min(room_z, int(np.abs(where[:, 0]).max()) + BOX_MARGIN)
        half_xy = min(room_xy, int(np.abs(where[:, 1:]).max()) + BOX_MARGIN)
    cut = tuple(slice(m - h, m + h + 1) for m, h in zip(middle, (half_z, half_xy, half_xy), strict=True))
    light = np.ascontiguousarray(light[cut])
    if radial:
        light = _distill.radial_average(light)
    tail = float(1 - light[raw_core[cut]].sum() / light.sum()) if light.sum() > 0 else 0.0
    support = otf_support(light.shape, **support_kw) if (modality != "lightsheet" or sheet_na is not None) else None
    outside = float(_outside(light, jnp.asarray(support, jnp.float32))) if support is not None else math.nan
    widths = _distill.fwhm(light)
    fwhm_um = tuple(float(w * v) for w, v in zip(widths, voxel, strict=True))
    if tail > WARN_TAILS:
        warnings.append(
            f"{100 * tail:.0f}% of the PSF's light lies outside the bead's bright core, in faint tails: "
            "use a brighter bead, or average several (-beads, several files)"
        )
    if outside > WARN_OUTSIDE:
        warnings.append(
            f"{100 * outside:.1f}% of the PSF's energy lies outside the {modality} OTF support for NA {na:g}, "
            f"n {n:g}, lambda {wavelength_um:g} um: check the modality, -NA, -n, -lambda, -size and -spaced"
        )
    mask_support = None
    if mask is not None:
        mask_support = jnp.asarray(otf_support(light.shape, **support_kw, scale=mask), jnp.float32)
        removing = float(_outside(light, mask_support))
        if removing > REFUSE_MASK:
            raise ParameterError(
                f"the {modality} mask (scale {mask:g}) would remove {100 * removing:.0f}% of the PSF's energy: "
                "the modality, NA, n or wavelength must be wrong; check them, or leave out the mask"
            )
        if removing > WARN_OUTSIDE:
            warnings.append(f"the mask removes {100 * removing:.1f}% of the PSF's energy: is the {modality} modality right?")
    value, total, plane, masked = _finish(jnp.asarray(light), mask_support, norm="none")
    if out_voxel is not None and out_voxel != voxel:
        value = jnp.maximum(resample_psf(value, voxel, out_voxel), 0)
    value, _, plane, _ = _finish(value, None, norm=norm)
    if norm == "infocus" and not float(plane) > 0:
        raise ParameterError("the in-focus plane holds no light; use -norm total")
    first = found[0][1]
    return PreparedPSF(
        value=value,
        voxel_size_um=out_voxel if out_voxel is not None else voxel,
        background=jnp.asarray(float(np.mean(levels[0])), jnp.float32),
        background_range=(float(min(lv.min() for lv in levels)), float(max(lv.max() for lv in levels))),
        noise=float(found[0][2]),
        peak_snr=peak_snr,
        centre=tuple(float(v) for v in first),
        centres=tuple(listed),
        shift=tuple(float(v) for v in np.array([half_z, half_xy, half_xy]) - first),
        total=total,
        fwhm_um=fwhm_um,
        tail_fraction=tail,
        outside_support=outside,
        masked_fraction=masked,
        warnings=tuple(warnings),
    )


def _beads_in(x: np.ndarray, index: int, background, centre, beads: int, radius: np.ndarray, warnings: list[str]):
    """One stack's background per plane (or the one given), its noise sigma, and its beads'
    centres (up to ``beads``, or the ``centre`` given); returns (the stack minus its
    background, the background per plane, sigma, the centres)."""
    if not np.all(np.isfinite(x)):
        raise ParameterError("the bead image holds NaN or infinite values")
    edge = _distill.border(x.shape)
    sigma = _distill.noise_sigma(x, edge)
    flat = float(np.median(x[edge]))
    y0 = x - np.float32(flat if background is None else background)
    if centre is None:
        peaks = _distill.find_beads(y0, sigma, beads, radius)
        if not peaks:
            blurred = np.asarray(_distill.smooth(jnp.asarray(y0), (1.0,))[0])
            peak = np.array(np.unravel_index(np.argmax(blurred), x.shape))
            if not blurred.max() > 5 * sigma / 3 and not (sigma == 0 and blurred.max() > 0):
                raise ParameterError(f"no bead: nothing stands above the background ({flat:.4g} +- {sigma:.3g})")
            if np.any(peak - radius < 0) or np.any(peak + radius >= np.array(x.shape)):
                raise ParameterError(f"the bead (brightest at z {peak[0]}, y {peak[1]}, x {peak[2]}) is too close to the edge to centre")
            peaks = [peak]
        if len(peaks) < beads:
            warnings.append(f"stack {index + 1}: {len(peaks)} bead(s) found of the {beads} asked for (isolated, bright, away from the edges)")
    else:
        given = np.asarray(centre, dtype=np.float64)
        if given.shape != (3,):
            raise ParameterError(f"centre must be (z, y, x), got {centre!r}")
        peaks = [np.round(given).astype(int)]
    if background is None:
        level = _distill.plane_background(x, _distill.far_from(_distill.core(y0, sigma, peaks)), sigma, flat)
    else:
        level = np.full(x.shape[0], float(background))
    y = x - level[:, None, None].astype(np.float32)
    centres = [_centroid(y, p, radius) for p in peaks] if centre is None else [np.asarray(centre, np.float64)]
    return y, level, sigma, centres


def _room(found, size) -> tuple[int, int]:
    """The half-sizes (z, xy) of the largest symmetric box, square in XY, that fits around
    every bead and, for beads of one stack, reaches no more than halfway to the next one;
    checked against the ``size`` asked for."""
    shape0 = found[0][0].shape
    room_z, room_xy = 10**9, 10**9
    for y, c, _ in found:
        room = np.floor(np.minimum(c, np.array(y.shape) - 1 - c)).astype(int)
        room_z, room_xy = min(room_z, int(room[0])), min(room_xy, int(min(room[1], room[2])))
    for i, (yi, ci, _) in enumerate(found):
        for yj, cj, _ in found[i + 1 :]:
            apart = np.abs(ci - cj)
            if yi is yj and apart[1] < 2 * room_xy + 1 and apart[2] < 2 * room_xy + 1 and apart[0] < 2 * room_z + 1:
                room_xy = min(room_xy, int(max(apart[1], apart[2]) // 2))
    if size is not None:
        want_z, want_xy = (int(v) // 2 for v in size)
        if want_z > room_z or want_xy > room_xy:
            c = found[0][1]
            raise ParameterError(
                f"a {size[0]} x {size[1]} x {size[1]} sub-region does not fit around the bead at "
                f"z {c[0]:.2f}, y {c[1]:.2f}, x {c[2]:.2f} in a {tuple(shape0)} stack "
                f"(at most {2 * room_z + 1} x {2 * room_xy + 1})"
            )
    if room_z < 1 or room_xy < 2:
        raise ParameterError(f"the bead is too close to the edge: no sub-region fits around it ({found[0][1]})")
    return room_z, room_xy


def _saturation(bead: Any, warnings: list[str]) -> None:
    """A warning when an integer bead stack reaches its type's largest value (saturated)."""
    for index, s in enumerate(bead if isinstance(bead, (list, tuple)) else [bead]):
        dtype = getattr(s, "dtype", None)
        try:
            if dtype is not None and np.issubdtype(np.dtype(dtype), np.integer):
                top = np.iinfo(np.dtype(dtype)).max
                if int(np.asarray(s).max()) >= top:
                    warnings.append(f"stack {index + 1} reaches {top}, its type's largest value: the bead may be saturated")
        except TypeError:
            continue


def _prepare_traced(data, background, centre, size, mask, norm, support_kw, voxel, distill) -> PreparedPSF:
    """The differentiable path: a given background and centre, no distilling."""
    if background is None or centre is None:
        raise ParameterError("to differentiate, give the background and the centre (they are found from concrete data)")
    if distill:
        raise ParameterError("to differentiate, turn distilling off (distill=False): its thresholds are found from concrete data")
    found = np.asarray(centre, dtype=np.float64)
    shape = np.array(data.shape)
    room = np.floor(np.minimum(found, shape - 1 - found)).astype(int)
    half_z, half_xy = int(room[0]), int(min(room[1], room[2]))
    if size is not None:
        half_z, half_xy = (int(v) // 2 for v in size)
    whole = np.round(found).astype(int)
    corner = (int(whole[0] - half_z), int(whole[1] - half_xy), int(whole[2] - half_xy))
    size3 = (2 * half_z + 1, 2 * half_xy + 1, 2 * half_xy + 1)
    cut = _cut(data - jnp.float32(background), jnp.asarray(found - whole, jnp.float32), corner=corner, size=size3)
    support = None if mask is None else jnp.asarray(otf_support(size3, **support_kw, scale=mask), jnp.float32)
    value, total, _, masked = _finish(cut, support, norm=norm)
    return PreparedPSF(
        value=value, voxel_size_um=voxel, background=jnp.asarray(background, jnp.float32),
        background_range=(float(background), float(background)), noise=math.nan, peak_snr=math.nan,
        centre=tuple(float(v) for v in found), centres=((0, *(float(v) for v in found)),),
        shift=tuple(float(v) for v in np.array(size3) // 2 - found), total=total, fwhm_um=(math.nan,) * 3,
        tail_fraction=math.nan, outside_support=math.nan, masked_fraction=masked, warnings=(),
    )
