"""The PSF distiller: a bead's light told apart from the camera's background and noise.

A measured bead stack is the PSF times the bead's photons, plus a background that is neither
flat nor constant (on the shared light-sheet bead it drifts by 10 counts over the stack, its
first plane stands 8 counts higher, one camera column 17 counts) and noise. Subtracting one
median and clipping the negatives keeps the positive half of the noise everywhere: on that
bead, 75-80 % of the result's sum was noise floor. The distiller instead:

1. **Background, per plane**: the mean (5-sigma clipped) of each plane's voxels far from the
   bead's light (outside its bright core grown by the widest smoothing scale); planes with too
   few such voxels take their neighbours' value. The noise sigma is the robust (MAD) spread
   of neighbour differences along X, which a slowly varying background does not touch.
2. **Multiresolution support** (Starck, Murtagh & Bijaoui, "Multiresolution support applied
   to image filtering and restoration", Graphical Models and Image Processing 57, 1995): the
   stack is split into bands by Gaussian smoothings of 1, 2, 4 and 8 voxels, W_0 = y - G_1 y,
   W_j = G_j y - G_2j y, and the coarsest G_8 y, which sum back to y. A coefficient is
   significant where it exceeds `SIGNIFICANCE` times its band's noise, measured (robust
   spread) far from the bead: the measured spread includes structured background and
   correlated noise, which the white-noise theory would miss by a factor of 3-8 on the
   coarse bands of real data. Only the significant coefficients connected to the bead count.
3. **Reconstruction**: the non-negative image whose coefficients match the data's on that
   support, by the iteration x <- max(0, x + sum_j M_j W_j(y - x)) from x = 0. Bright parts
   keep their full resolution (their finest coefficients are significant); faint tails come
   from the coarse bands only, so the noise there is averaged, not clipped; elsewhere zero.

Measured (tests/test_distill.py and docs/preparation.md): on the shared light-sheet bead the
share of the PSF's sum outside the bead's core falls from 80 % to 7.5 %; on a simulated weak
widefield bead (peak 200 photons) the PSF's error falls from 3.9 (raw) to 0.19 (0.13 with
radial averaging), and restoring with it comes within 2 % (0.1 %) of the true PSF's NRMSE.
"""

from __future__ import annotations

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
from scipy import ndimage

SCALES = (1.0, 2.0, 4.0, 8.0)  # Gaussian sigmas (voxels) between the bands
SIGNIFICANCE = 4.0  # a coefficient counts above this many of its band's noise sigmas
CORE_SIGNIFICANCE = 5.0  # the bright core: smoothed by 1 voxel, this many noise sigmas
SUPPORT_ITERATIONS = 20
CLIP = 5.0  # the background's clipped mean drops what lies this many noise sigmas away
FEW_FAR = 2000  # with fewer voxels far from the bead, band noise from the white-noise theory


def _transfer(shape, sigma: float):
    """The real-FFT transfer function of a Gaussian blur of ``sigma`` voxels (periodic)."""
    out = 1.0
    for axis, n in enumerate(shape):
        f = np.fft.rfftfreq(n) if axis == len(shape) - 1 else np.fft.fftfreq(n)
        reshape = [1] * len(shape)
        reshape[axis] = len(f)
        out = out * np.exp(-2 * (np.pi * sigma * f.reshape(reshape)) ** 2)
    return jnp.asarray(out, jnp.float32)


@functools.partial(jax.jit, static_argnames=("scales",))
def smooth(y, scales: tuple[float, ...]):
    """``y`` blurred by Gaussians of each of ``scales`` voxels, stacked."""
    spectrum = jnp.fft.rfftn(y)
    return jnp.stack([jnp.fft.irfftn(spectrum * _transfer(y.shape, s), s=y.shape) for s in scales])


@functools.partial(jax.jit, static_argnames=("scales",))
def bands(y, scales: tuple[float, ...] = SCALES):
    """The band decomposition (module docstring): len(scales) + 1 arrays summing to ``y``."""
    c = smooth(y, scales)
    return jnp.concatenate([(y - c[0])[None], c[:-1] - c[1:], c[-1:]])


@functools.partial(jax.jit, static_argnames=("scales", "iterations"))
def reconstruct(y, support, scales: tuple[float, ...] = SCALES, iterations: int = SUPPORT_ITERATIONS):
    """The non-negative x whose band coefficients match ``y``'s where ``support`` (one mask
    per band) holds, by the multiresolution-support iteration."""

    def step(_, x):
        return jnp.maximum(x + jnp.sum(jnp.where(support, bands(y - x, scales), 0), axis=0), 0)

    return jax.lax.fori_loop(0, iterations, step, jnp.zeros_like(y))


def noise_sigma(x: np.ndarray, where: np.ndarray | None = None) -> float:
    """The noise's standard deviation from neighbour differences along X (1.4826 x their
    median absolute deviation / sqrt 2), over ``where`` (both voxels in it) or everywhere."""
    d = np.diff(x, axis=-1)
    if where is not None:
        d = d[where[..., 1:] & where[..., :-1]]
    d = d.ravel()
    if d.size == 0:
        return 0.0
    return float(1.4826 * np.median(np.abs(d - np.median(d))) / math.sqrt(2))


def robust_std(v: np.ndarray) -> float:
    return float(1.4826 * np.median(np.abs(v - np.median(v)))) if v.size else 0.0


def border(shape) -> np.ndarray:
    """The voxels within a tenth of the stack's size (at least 2) of its faces."""
    inner = np.zeros(shape, bool)
    inner[tuple(slice(w, n - w) for n in shape for w in [max(2, n // 10)])] = True
    return ~inner


def plane_background(x: np.ndarray, far: np.ndarray, sigma: float, fallback: float) -> np.ndarray:
    """Per plane, the clipped mean of the voxels in ``far``; planes with fewer than 5 % of
    their voxels there take the nearest planes' values (``fallback`` if none has)."""
    out = np.full(x.shape[0], np.nan)
    for z in range(x.shape[0]):
        v = x[z][far[z]].astype(np.float64)
        if v.size < max(50, 0.05 * x[z].size):
            continue
        m = float(np.median(v))
        for _ in range(3):
            if sigma > 0:
                v = v[np.abs(v - m) < CLIP * sigma]
            m = float(v.mean())
        out[z] = m
    ok = np.nonzero(~np.isnan(out))[0]
    if ok.size == 0:
        return np.full(x.shape[0], fallback)
    return np.interp(np.arange(x.shape[0]), ok, out[ok])


def white_band_sigmas(shape, sigma: float, scales: tuple[float, ...] = SCALES) -> np.ndarray:
    """Each band's noise sigma for white noise of ``sigma``: sigma times the band filter's
    L2 norm."""
    delta = jnp.zeros(shape, jnp.float32).at[(0,) * len(shape)].set(1)
    return sigma * np.sqrt(np.asarray(jnp.sum(bands(delta, scales) ** 2, axis=tuple(range(1, len(shape) + 1)))))


def core(y: np.ndarray, sigma: float, seeds) -> np.ndarray:
    """The bright core: where ``y`` smoothed by 1 voxel stands `CORE_SIGNIFICANCE` noise
    sigmas above zero (the white-noise sigma of that blur), in the parts that hold a seed
    (z, y, x voxel)."""
    blurred = np.asarray(smooth(jnp.asarray(y, jnp.float32), (1.0,))[0])
    sigma_1 = float(white_band_sigmas(y.shape, 1.0, (1.0,))[-1]) * sigma
    labels, _ = ndimage.label(blurred > CORE_SIGNIFICANCE * sigma_1)
    keep = {int(labels[tuple(int(round(c)) for c in s)]) for s in seeds} - {0}
    return np.isin(labels, list(keep)) if keep else np.zeros(y.shape, bool)


def far_from(light: np.ndarray, scales: tuple[float, ...] = SCALES) -> np.ndarray:
    """Voxels further from ``light`` than twice the widest smoothing (its blur reaches there
    no more)."""
    if not light.any():
        return np.ones(light.shape, bool)
    reach = int(math.ceil(2 * scales[-1])) + 1
    distance = ndimage.distance_transform_cdt(~light, metric="chessboard")
    return distance > reach


@dataclasses.dataclass(frozen=True)
class Distilled:
    """What `distill` returns: the bead's light (``value``, non-negative, background and noise
    gone), where it was found (``support``: the union of the significant coefficients
    connected to the bead), the bright ``core``, each band's noise sigma and whether those
    were measured (far from the bead) or from the white-noise theory."""

    value: np.ndarray
    support: np.ndarray
    core: np.ndarray
    band_sigma: np.ndarray
    measured: bool


def distill(y: np.ndarray, sigma: float, *, centre=None, scales: tuple[float, ...] = SCALES) -> Distilled:
    """The light of the bead at ``centre`` (default: the middle voxel) in ``y`` (background
    already subtracted; noise sigma ``sigma``), by the multiresolution support (module
    docstring)."""
    y = np.asarray(y, np.float32)
    centre = tuple(n // 2 for n in y.shape) if centre is None else tuple(int(round(c)) for c in centre)
    bright = core(y, sigma, [centre])
    far = far_from(bright, scales)
    w = np.asarray(bands(jnp.asarray(y), scales))
    measured = int(far.sum()) >= FEW_FAR
    if measured:
        band_sigma = np.array([robust_std(b[far]) for b in w])
    else:
        band_sigma = white_band_sigmas(y.shape, sigma, scales)
    band_sigma = np.maximum(band_sigma, np.finfo(np.float32).tiny)
    significant = np.abs(w) >= SIGNIFICANCE * band_sigma[:, None, None, None]
    positive = np.any(w >= SIGNIFICANCE * band_sigma[:, None, None, None], axis=0) | bright
    labels, _ = ndimage.label(positive)
    label = labels[centre]
    support = (labels == label) if label else bright
    region = ndimage.binary_dilation(support, iterations=2)
    mask = significant & region[None]
    value = np.asarray(reconstruct(jnp.asarray(y), jnp.asarray(mask), scales))
    return Distilled(value=value, support=support, core=bright, band_sigma=band_sigma, measured=measured)


def find_beads(y: np.ndarray, sigma: float, count: int, radius: np.ndarray) -> list[np.ndarray]:
    """Up to ``count`` beads in ``y`` (background subtracted): the brightest local maxima of
    the 1-voxel blur that stand `CORE_SIGNIFICANCE` sigmas out, hold at least a fifth of the
    brightest one's peak, lie ``radius`` (z, y, x voxels) from the faces and as far from each
    other. Brightest first; (z, y, x) integer voxels."""
    blurred = np.asarray(smooth(jnp.asarray(y, jnp.float32), (1.0,))[0])
    sigma_1 = float(white_band_sigmas(y.shape, 1.0, (1.0,))[-1]) * sigma
    size = tuple(int(2 * r + 1) for r in radius)
    peaks = (blurred == ndimage.maximum_filter(blurred, size=size, mode="constant", cval=-np.inf)) & (
        blurred > CORE_SIGNIFICANCE * sigma_1
    )
    found = np.argwhere(peaks)
    if found.size == 0:
        return []
    found = found[np.argsort(-blurred[tuple(found.T)])]
    brightest = blurred[tuple(found[0])]
    shape = np.array(y.shape)
    chosen: list[np.ndarray] = []
    for p in found:
        if blurred[tuple(p)] < 0.2 * brightest:
            break
        if np.any(p - radius < 0) or np.any(p + radius >= shape):
            continue
        if any(np.all(np.abs(p - q) <= 2 * radius) for q in chosen):
            continue
        chosen.append(p)
        if len(chosen) == count:
            break
    return chosen


EXACT_RADIUS = 10  # voxels: within it, rings hold the voxels of exactly one radius


def radial_average(h: np.ndarray) -> np.ndarray:
    """``h`` averaged over rings about the optical axis through its middle (index shape // 2
    in Y and X), plane by plane. Within `EXACT_RADIUS` pixels a ring holds the voxels of one
    exact radius (i^2 + j^2 the same: the symmetric images of a voxel, and any others that
    happen to lie as far), so a steep core is not blurred; further out, where the profile is
    smooth, each voxel shares its value between the two rings of unit width its radius falls
    between (linear weights) and takes back their means with the same weights."""
    _, ny, nx = h.shape
    yy, xx = np.mgrid[:ny, :nx]
    squared = ((yy - ny // 2) ** 2 + (xx - nx // 2) ** 2).ravel()
    r = np.sqrt(squared)
    i0 = np.floor(r).astype(int)
    w1 = r - i0
    w0 = 1 - w1
    size = int(i0.max()) + 2
    count = np.bincount(i0, w0, size) + np.bincount(i0 + 1, w1, size)
    near = squared < EXACT_RADIUS**2
    _, group = np.unique(squared, return_inverse=True)
    members = np.bincount(group)
    out = np.empty(h.shape, np.float64)
    for z, plane in enumerate(np.asarray(h, np.float64)):
        v = plane.ravel()
        ring = (np.bincount(i0, w0 * v, size) + np.bincount(i0 + 1, w1 * v, size)) / np.maximum(count, 1e-12)
        exact = np.bincount(group, v) / members
        out[z] = np.where(near, exact[group], ring[i0] * w0 + ring[i0 + 1] * w1).reshape(ny, nx)
    return out.astype(h.dtype)


def fwhm(h: np.ndarray) -> tuple[float, float, float]:
    """Full width at half maximum (z, y, x voxels) of the profiles through the brightest
    voxel, by linear interpolation between the samples around each half-maximum crossing
    (NaN where the profile does not fall to half within the box)."""
    peak = np.unravel_index(int(np.argmax(h)), h.shape)
    top = float(h[peak])
    out = []
    for axis in range(3):
        line = np.asarray(h[tuple(slice(None) if a == axis else peak[a] for a in range(3))], np.float64)
        c = peak[axis]
        sides = []
        for direction in (-1, 1):
            i = c
            while 0 <= i + direction < len(line) and line[i + direction] > top / 2:
                i += direction
            j = i + direction
            if not 0 <= j < len(line):
                sides.append(math.nan)
                break
            a, b = line[i], line[j]
            sides.append(abs(i - c) + (a - top / 2) / (a - b))
        out.append(float(sum(sides)) if len(sides) == 2 else math.nan)
    return (out[0], out[1], out[2])
