"""The imaging operator H = M (h * .): convolution on the object grid, then a crop to the data.

The object grid is the data grid padded on each side (DESIGN.md section 2): light from
outside the field of view is modelled and nothing wraps around ("limited data"). With no
padding the object grid is the data grid and the model is the plain periodic one.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Complex, Float

from ._errors import ParameterError

SUPPORT_FRACTION = 1e-3  # a PSF plane (or row, column) beyond this share of the brightest is outside its support


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
        object_shape: (Z, Y, X) of the object grid, at least data_shape + 2 pad per axis,
            rounded up to FFT-friendly lengths; equal to data_shape when there is no padding.
        offset: (z, y, x) index of the data's first voxel in the object grid.
    """

    data_shape: tuple[int, int, int]
    object_shape: tuple[int, int, int]
    offset: tuple[int, int, int]

    @property
    def periodic(self) -> bool:
        return self.object_shape == self.data_shape

    @property
    def pad(self) -> tuple[tuple[int, int], ...]:
        """(before, after) padding per axis."""
        return tuple(
            (o, n - d - o) for o, n, d in zip(self.offset, self.object_shape, self.data_shape, strict=True)
        )

    @property
    def data_slices(self) -> tuple[slice, slice, slice]:
        return tuple(slice(o, o + d) for o, d in zip(self.offset, self.data_shape, strict=True))  # type: ignore[return-value]


def make_grid(data_shape: Sequence[int], pad: Sequence[int]) -> Grid:
    """The object grid for data of ``data_shape`` (z, y, x) padded by ``pad`` (z, y, x)
    voxels on each side; any rounding up to an FFT-friendly length goes to the far side."""
    data_shape = tuple(int(n) for n in data_shape)
    pad = tuple(int(p) for p in pad)
    if len(data_shape) != 3 or len(pad) != 3:
        raise ParameterError(f"expected (z, y, x) shapes and pads, got {data_shape} and {pad}")
    if any(p < 0 for p in pad):
        raise ParameterError(f"padding must be >= 0 voxels, got {pad}")
    object_shape = tuple(
        d if p == 0 else next_fast_length(d + 2 * p) for d, p in zip(data_shape, pad, strict=True)
    )
    return Grid(data_shape, object_shape, pad)  # type: ignore[arg-type]


def default_pad(psf: np.ndarray, data_shape: Sequence[int]) -> tuple[int, int, int]:
    """Half the PSF's support on each side (none along an axis where the data have one plane
    and the PSF has one plane)."""
    half = psf_half_support(psf)
    return tuple(0 if (d == 1 and h == 0) else h for d, h in zip(data_shape, half, strict=True))  # type: ignore[return-value]


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


def forward(
    otf: Complex[Array, "z y xh"], f: Float[Array, "z y x"], grid: Grid
) -> Float[Array, "dz dy dx"]:
    """H f: convolve on the object grid, keep the data grid."""
    blurred = jnp.fft.irfftn(jnp.fft.rfftn(f) * otf, s=grid.object_shape)
    return blurred if grid.periodic else blurred[grid.data_slices]


def adjoint(
    otf: Complex[Array, "z y xh"], r: Float[Array, "dz dy dx"], grid: Grid
) -> Float[Array, "z y x"]:
    """H^T r: place on the object grid (zeros around), correlate with the PSF."""
    if not grid.periodic:
        r = jnp.pad(r, grid.pad)
    return jnp.fft.irfftn(jnp.fft.rfftn(r) * jnp.conj(otf), s=grid.object_shape)


def describe(grid: Grid) -> str:
    """``64x256x256 data in a 96x300x300 object grid (pad z 16+16, y 22+22, x 22+22)``."""
    shape = "x".join(str(n) for n in grid.data_shape)
    if grid.periodic:
        return f"{shape} data, periodic (no padding)"
    obj = "x".join(str(n) for n in grid.object_shape)
    pads = ", ".join(f"{a} {lo}+{hi}" for a, (lo, hi) in zip("zyx", grid.pad, strict=True))
    return f"{shape} data in a {obj} object grid (pad {pads})"


def voxels(shape: Sequence[int]) -> int:
    return math.prod(int(n) for n in shape)
