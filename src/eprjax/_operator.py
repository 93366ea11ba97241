"""The imaging operator H = D_k M (h * .): convolution on the object grid, a crop to the
data's region, and (for restoration onto a finer grid) a sum over k x k (x k) blocks.

The object grid is the data grid padded on each side (DESIGN.md section 2): light from
outside the field of view is modelled and nothing wraps around ("limited data"). With no
padding the object grid is the data grid and the model is the plain periodic one.

With a factor k > 1 along an axis (``super_epr``), the object lives on a grid k times finer
than the data: its region under the data has k times as many voxels along that axis, and each
data voxel is the sum of the k (k x k, k x k x k) fine voxels it covers.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

import equinox as eqx
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Complex, Float

from ._errors import ParameterError
from ._fft import convolve, convolve_crop, place_convolve

SUPPORT_FRACTION = 1e-3  # a PSF plane (or row, column) beyond this share of the brightest is outside its support
ENERGY_FRACTION = 1e-3  # the default padding reaches where all but this share of the PSF's energy lies
PAD_MINIMUM = 8  # ... but at most half the PSF's support and the data's size, or this many voxels


def next_fast_length(n: int) -> int:
    """The smallest m >= n whose only prime factors are 2, 3, 5 and 7 (fast for every FFT
    library JAX uses: ducc on CPUs, cuFFT on GPUs)."""
    if n < 1:
        raise ParameterError(f"an FFT length must be positive, got {n}")
    m = n
    while True:
        k = m
        for p in (2, 3, 5, 7):
            while k % p == 0:
                k //= p
        if k == 1:
            return m
        m += 1


def psf_half_support(psf: np.ndarray) -> tuple[int, int, int]:
    """Per axis (z, y, x), how far from its origin (index shape // 2) the PSF reaches: the
    furthest plane (row, column) whose total exceeds `SUPPORT_FRACTION` of the brightest's.
    Measured on totals, not single voxels, because a widefield PSF spreads each defocused
    plane thin while every plane carries much of the light."""
    h = np.abs(np.asarray(psf, dtype=np.float64))
    out = []
    for axis in range(3):
        profile = h.sum(axis=tuple(a for a in range(3) if a != axis))
        origin = h.shape[axis] // 2
        inside = np.nonzero(profile > SUPPORT_FRACTION * profile.max())[0] if profile.max() > 0 else [origin]
        out.append(int(max(abs(int(i) - origin) for i in inside)))
    return (out[0], out[1], out[2])


@dataclasses.dataclass(frozen=True)
class Grid:
    """Where the data sit in the object grid: shapes and offsets, all static.

    Attributes:
        data_shape: (Z, Y, X) of the data.
        object_shape: (Z, Y, X) of the object grid, at least fine_shape + 2 pad per axis,
            rounded up to FFT-friendly lengths; equal to fine_shape when there is no padding.
        offset: (z, y, x) index of the data's first (fine) voxel in the object grid.
        factor: (z, y, x) how many times finer the object grid is than the data's (1: the
            same sampling).
    """

    data_shape: tuple[int, int, int]
    object_shape: tuple[int, int, int]
    offset: tuple[int, int, int]
    factor: tuple[int, int, int] = (1, 1, 1)

    @property
    def fine_shape(self) -> tuple[int, int, int]:
        """(Z, Y, X) of the data's region on the object's sampling: data_shape * factor."""
        return tuple(d * k for d, k in zip(self.data_shape, self.factor, strict=True))  # type: ignore[return-value]

    @property
    def binned(self) -> bool:
        return self.factor != (1, 1, 1)

    @property
    def periodic(self) -> bool:
        return self.object_shape == self.fine_shape

    @property
    def pad(self) -> tuple[tuple[int, int], ...]:
        """(before, after) padding per axis."""
        return tuple(
            (o, n - d - o) for o, n, d in zip(self.offset, self.object_shape, self.fine_shape, strict=True)
        )

    @property
    def data_slices(self) -> tuple[slice, slice, slice]:
        """Where the data's region lies in the object grid (on the object's sampling)."""
        return tuple(slice(o, o + d) for o, d in zip(self.offset, self.fine_shape, strict=True))  # type: ignore[return-value]


def factor3(factor: int | Sequence[int]) -> tuple[int, int, int]:
    """``factor`` as (z, y, x) integers >= 1; a single int applies to Y and X only (Z keeps
    its sampling, as ``-super K`` does)."""
    values = (1, factor, factor) if isinstance(factor, (int, np.integer)) else tuple(factor)
    if len(values) != 3 or not all(isinstance(k, (int, np.integer)) and not isinstance(k, bool) for k in values):
        raise ParameterError(f"factor must be an int or (z, y, x) ints, got {factor!r}")
    if any(k < 1 for k in values):
        raise ParameterError(f"factor must be >= 1, got {factor!r}")
    return tuple(int(k) for k in values)  # type: ignore[return-value]


def make_grid(data_shape: Sequence[int], pad: Sequence[int], factor: Sequence[int] = (1, 1, 1)) -> Grid:
    """The object grid for data of ``data_shape`` (z, y, x) on a grid ``factor`` (z, y, x)
    times finer, padded by ``pad`` (z, y, x) fine voxels on each side; any rounding up to an
    FFT-friendly length goes to the far side."""
    data_shape = tuple(int(n) for n in data_shape)
    pad = tuple(int(p) for p in pad)
    factor = factor3(tuple(factor))
    if len(data_shape) != 3 or len(pad) != 3:
        raise ParameterError(f"expected (z, y, x) shapes and pads, got {data_shape} and {pad}")
    if any(p < 0 for p in pad):
        raise ParameterError(f"padding must be >= 0 voxels, got {pad}")
    object_shape = tuple(
        d * k if p == 0 else next_fast_length(d * k + 2 * p) for d, k, p in zip(data_shape, factor, pad, strict=True)
    )
    return Grid(data_shape, object_shape, pad, factor)  # type: ignore[arg-type]


def energy_half_width(psf: np.ndarray, fraction: float = ENERGY_FRACTION) -> tuple[int, int, int]:
    """Per axis (z, y, x), the half-width of the slab about the PSF's origin that holds all
    but ``fraction`` of its energy (sum of squares). The energy, unlike the light, sits in the
    core: a widefield PSF's defocused planes each carry as much light as the focal one, but
    spread so thin that their squares are small, and they reach the data as a smooth haze
    that a modest margin models as well as the full box does (benchmarks/bench_grid.py)."""
    h = np.asarray(psf, dtype=np.float64) ** 2
    out = []
    for axis in range(3):
        profile = h.sum(axis=tuple(a for a in range(3) if a != axis))
        origin, total = h.shape[axis] // 2, profile.sum()
        cumulative = np.array([profile[max(0, origin - w) : origin + w + 1].sum() for w in range(max(origin, h.shape[axis] - 1 - origin) + 1)])
        out.append(int(np.argmax(cumulative >= (1 - fraction) * total)) if total > 0 else 0)
    return (out[0], out[1], out[2])


def default_pad(psf: np.ndarray, data_shape: Sequence[int]) -> tuple[int, int, int]:
    """The default padding per axis (z, y, x): where all but `ENERGY_FRACTION` of the PSF's
    energy lies (`energy_half_width`), but no more than half the PSF's support (at least
    `PAD_MINIMUM` voxels) and no more than the data's own size (at least `PAD_MINIMUM`).

    Half the support is what keeps the light of objects inside the field from wrapping back
    into it: an object at one edge sends light a half-support out, and a periodic grid with
    twice that padding of room takes it before it comes round; light from objects further
    out, which a larger grid would model, reaches the data as a smooth haze (measured in
    benchmarks/bench_grid.py). None along an axis where the data have one plane and the PSF
    has one plane."""
    half = psf_half_support(psf)
    energy = energy_half_width(psf)
    out = []
    for d, h, e in zip(data_shape, half, energy, strict=True):
        room = min(max(math.ceil(h / 2), PAD_MINIMUM), max(int(d), PAD_MINIMUM))
        out.append(0 if (d == 1 and h == 0) else min(h, e, room))
    return (out[0], out[1], out[2])


def _placement(n_in: Sequence[int], n_out: Sequence[int]) -> tuple[tuple[slice, ...], tuple[slice, ...]]:
    src, dst = [], []
    for a, b in zip(n_in, n_out, strict=True):
        shift = b // 2 - a // 2  # index in the output = index in the PSF + shift
        lo, hi = max(0, -shift), min(a, b - shift)
        src.append(slice(lo, hi))
        dst.append(slice(lo + shift, hi + shift))
    return tuple(src), tuple(dst)


def centre_psf(psf: Float[Array, "pz py px"], shape: Sequence[int]) -> Float[Array, "z y x"]:
    """The PSF cropped or zero-padded to ``shape``, its origin (index psf.shape // 2) moved to
    index shape // 2; what falls outside ``shape`` is cut off. Differentiable in ``psf``."""
    src, dst = _placement(psf.shape, shape)
    return jnp.zeros(tuple(shape), dtype=psf.dtype).at[dst].set(psf[src])


def psf_otf(psf: Float[Array, "pz py px"], grid: Grid) -> tuple[Complex[Array, "z y xh"], Float[Array, ""]]:
    """The PSF placed on the object grid with its origin at index 0, as its real FFT (the
    OTF), and the sum of what was placed (``s`` in DESIGN.md)."""
    kernel = centre_psf(psf, grid.object_shape)
    return jnp.fft.rfftn(jnp.fft.ifftshift(kernel)), jnp.sum(kernel)


def bin_blocks(x: Float[Array, "fz fy fx"], factor: Sequence[int]) -> Float[Array, "z y x"]:
    """D_k: the sum over each factor-sized (z, y, x) block."""
    (kz, ky, kx), (z, y, xx) = factor, x.shape
    if (kz, ky, kx) == (1, 1, 1):
        return x
    return x.reshape(z // kz, kz, y // ky, ky, xx // kx, kx).sum(axis=(1, 3, 5))


def spread_blocks(r: Float[Array, "z y x"], factor: Sequence[int]) -> Float[Array, "fz fy fx"]:
    """D_k^T: each voxel copied over its factor-sized block (the adjoint of `bin_blocks`)."""
    (kz, ky, kx), (z, y, x) = factor, r.shape
    if (kz, ky, kx) == (1, 1, 1):
        return r
    r = jnp.broadcast_to(r[:, None, :, None, :, None], (z, kz, y, ky, x, kx))
    return r.reshape(z * kz, y * ky, x * kx)


class Weighted(eqx.Module):
    """The operator W^(1/2) H: H (its OTF) followed by a per-voxel factor ``root`` on the
    data grid, the square root of the data term's weights. The weighted problem
    ||W^(1/2) (g - H f)||^2 + lam ||f||^2 is the plain one for W^(1/2) g and W^(1/2) H, so
    the solver, its gradients and the criteria take it wherever they take an OTF."""

    otf: Complex[Array, "z y xh"]
    root: Float[Array, "dz dy dx"]


def weighted(otf, root):
    """``otf`` as the operator W^(1/2) H (`Weighted`), or as it is when ``root`` is None."""
    return otf if root is None else Weighted(otf, root)


def forward(
    otf: Complex[Array, "z y xh"] | Weighted, f: Float[Array, "z y x"], grid: Grid
) -> Float[Array, "dz dy dx"]:
    """H f: convolve on the object grid, keep the data's region, sum the fine blocks (and,
    for a `Weighted` operator, times the root of the weights)."""
    if isinstance(otf, Weighted):
        return otf.root * forward(otf.otf, f, grid)
    if grid.periodic:
        return bin_blocks(convolve(f, otf, grid.object_shape), grid.factor)
    return bin_blocks(convolve_crop(f, otf, grid.object_shape, grid.data_slices), grid.factor)


def adjoint(
    otf: Complex[Array, "z y xh"] | Weighted, r: Float[Array, "dz dy dx"], grid: Grid
) -> Float[Array, "z y x"]:
    """H^T r: spread over the fine blocks, place on the object grid (zeros around),
    correlate with the PSF (for a `Weighted` operator, r times the root of the weights first)."""
    if isinstance(otf, Weighted):
        return adjoint(otf.otf, otf.root * r, grid)
    r = spread_blocks(r, grid.factor)
    if grid.periodic:
        return convolve(r, otf, grid.object_shape, conjugate=True)
    return place_convolve(r, otf, grid.object_shape, grid.data_slices, conjugate=True)


def power_gain(grid: Grid) -> int:
    """How much D_k^T D_k multiplies a constant: the number of fine voxels in a block. With
    s = sum(h), the operator's zero-frequency power gain is s^2 times this."""
    return math.prod(grid.factor)


def describe(grid: Grid) -> str:
    """``64x256x256 data in a 96x300x300 object grid (pad z 16+16, y 22+22, x 22+22)``; onto
    a finer grid: ``64x256x256 data onto a 64x512x512 grid (factor z 1, y 2, x 2) in ...``."""
    text = "x".join(str(n) for n in grid.data_shape) + " data"
    if grid.binned:
        factors = ", ".join(f"{a} {k}" for a, k in zip("zyx", grid.factor, strict=True))
        text += f" onto a {'x'.join(str(n) for n in grid.fine_shape)} grid (factor {factors})"
    if grid.periodic:
        return text + ", periodic (no padding)"
    obj = "x".join(str(n) for n in grid.object_shape)
    pads = ", ".join(f"{a} {lo}+{hi}" for a, (lo, hi) in zip("zyx", grid.pad, strict=True))
    cost = voxels(grid.object_shape) / voxels(grid.fine_shape)
    return f"{text} in a {obj} object grid (pad {pads}; {cost:.2f}x the data's voxels)"


def voxels(shape: Sequence[int]) -> int:
    return math.prod(int(n) for n in shape)
