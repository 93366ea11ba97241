"""Big volumes in overlapping XY segments (DESIGN.md section 2, "Segments").

A volume is cut into segments of one size (full Z) that overlap in X and Y; each is restored
with the padded (limited-data) model and the same alpha, so one compiled function serves all
of them; they are restored in batches (``vmap`` inside ``lax.map``) and recomposed with
weights that fall smoothly (raised cosine) across each overlap, so no seam shows.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
from collections.abc import Callable, Sequence

import jax
import numpy as np

from ._errors import ParameterError
from ._fft import uses_host_fft
from ._operator import Grid, default_pad, factor3, make_grid, psf_half_support, voxels

# Peak memory of restoring a segment, float32, measured by benchmarks/memory_per_voxel.py
# (segments as a run pads them, batches of 1 and 2, weighted or not): on the CPU, with the
# compiled code cached, 58-114 bytes per object-grid voxel over 0.4-50 million voxels (the
# most on the smallest segments, where a fixed part weighs; fitted 7 MiB + 67.5 B per voxel);
# compiling adds 100-140 MiB on a first run, outside the budget. On an H100 36-45 B per voxel.
# A segmented run holds more: over 49-100 segments a run's peak rose 10-20 % above the
# isolated solve's (32x1024x1024 under -memory 100, 40x160x160 object grids: 96-111 MiB over
# the baseline for a predicted 92 at 78 B per voxel), and one plan's peak varied by about
# 20 MiB either way from run to run (2026-12-03 and -06: 52-101 MiB over the baseline in 14
# runs, 99 at 100 B per voxel; anonymous memory, set in the run's first seconds;
# MALLOC_ARENA_MAX=2 did not remove it, a fixed mmap threshold made the run 46 % slower):
# the planner counts 110 B on the CPU. Counting more does not help where two such runs share
# two cores: 102-112 MiB at 110 B, and 108-134 at 130 B with its smaller, more numerous
# segments (docs/big-data.md).
# Remeasured with the preconditioner (2026-12-06, batches 1 and 2, weighted or not, the
# allocator as the commands set it and as glibc leaves it, compiled code cached): XLA's FFT
# (16x64x64 to 32x128x128 segments) 74-161 B per voxel, 55-62 MiB for the smallest (0.4M
# voxels), which took the fixed part from 16 to 24 MiB; the 110 B stays. Then the iteration
# came to hold less (v = H^T d, no separate H^T of the gradient; the host FFT in XLA's
# buffers), and the small run the slow memory test takes as its baseline fell further than
# the segmented run (same day, i2i case alone: the baseline 294.0 -> 274.8 MiB, the run
# 386.3 -> 374.7, so 92.3 -> 100.0 MiB over it; 101.7 with the OME-Zarr case beside it), at
# the budget's edge: the fixed part went to 32 MiB.
BYTES_PER_OBJECT_VOXEL = {"cpu": 110, "gpu": 60}
FIXED_BYTES = {"cpu": 32 * 2**20, "gpu": 0}
# With the host FFT (`_fft`, large grids on CPUs) a restoration peaks higher than with XLA's,
# mostly by a fixed part: a program that calls back into Python is compiled on every run (the
# compilation cache cannot keep it), with the memory compiling takes, and ducc0 keeps its
# plans and its spectrum buffer. Measured (the same runs, 32x256x256 to 64x512x512 segments,
# 4.8-50 million voxels), since ducc0 writes into XLA's own result buffers (2026-12-06,
# fourth session; before, a kept result buffer per thread and a copy of each result came
# on top: 600-1059 MiB for 4.8-7.9 million voxels, 111-118 B at 25 million): 468-745 MiB for
# 4.8-7.9 million voxels, 78-92 B per voxel at 25 million, 64-72 at 50 million (two at a
# time); 100 MiB more than XLA's lies over every case (the closest: 561 MiB for a predicted
# 624, weighted, glibc's allocator).
HOST_FFT_FIXED_BYTES = 100 * 2**20
HOST_FFT_BYTES_PER_OBJECT_VOXEL = 0
# Besides the restoration, a segmented run holds each segment of the chunk in host memory on
# its way in and out: the data read (float32, data grid) and the result as the store saves it
# (the result and zarr's encoded copy of its chunk, float32, restoration grid). Measured with
# a 10 ms RSS sampler on a 32x1024x1024 run in 148x148 segments: the resident memory rises by
# 13-21 MiB over the restoration's plateau while a segment (2.7 MiB) is saved, before the
# SHA-1 stopped copying the segment: these host copies were the part the budget missed.
HOST_COPIES_IN, HOST_COPIES_OUT = 1, 2
MEMORY_MARGIN = 0.5  # use at most this share of the device's memory


def segment_bytes(object_voxels: int, batch: int = 1, data_voxels: int = 0, fine_voxels: int | None = None) -> int:
    """Predicted peak memory of restoring ``batch`` segments of ``object_voxels`` each on
    JAX's default device, with (for a segmented run) the host copies of each segment's
    ``data_voxels`` in and ``fine_voxels`` (default ``data_voxels``) out."""
    kind = "cpu" if jax.devices()[0].platform == "cpu" else "gpu"
    fine = data_voxels if fine_voxels is None else fine_voxels
    host = 4 * (HOST_COPIES_IN * data_voxels + HOST_COPIES_OUT * fine)
    per_voxel, fixed = BYTES_PER_OBJECT_VOXEL[kind], FIXED_BYTES[kind]
    if kind == "cpu" and object_voxels and uses_host_fft((object_voxels * batch,)):  # only the count matters
        per_voxel += HOST_FFT_BYTES_PER_OBJECT_VOXEL
        fixed += HOST_FFT_FIXED_BYTES
    return fixed + batch * (object_voxels * per_voxel + host)


def _grid_bytes(grid: Grid, batch: int = 1) -> int:
    """`segment_bytes` of segments on ``grid`` (a `Grid`), host copies included."""
    return segment_bytes(voxels(grid.object_shape), batch, voxels(grid.data_shape), voxels(grid.fine_shape))


log = logging.getLogger("eprjax")


@dataclasses.dataclass(frozen=True)
class SegmentPlan:
    """How a volume is cut: segments of ``segment`` (y, x) voxels, full Z, starting at
    ``starts`` (y, x), overlapping by at least ``overlap`` (y, x); each padded by ``pad``
    (z, y, x) on each side; restored ``batch`` at a time. Where two segments meet, each
    leaves out ``margin`` voxels at its edge (its restoration is least sure there) and the
    two are blended across the rest of the overlap. With a ``factor`` (z, y, x) the segments
    are restored onto a grid that many times finer: sizes, starts, overlaps and margins are
    in data voxels, ``pad`` in fine voxels, and `finer` gives the plan of the result."""

    data_shape: tuple[int, int, int]
    segment: tuple[int, int]
    overlap: tuple[int, int]
    starts: tuple[tuple[int, int], ...]
    pad: tuple[int, int, int]
    batch: int
    margin: tuple[int, int] = (0, 0)  # (y, x) edge voxels of a segment, where it meets another, left out
    factor: tuple[int, int, int] = (1, 1, 1)

    @property
    def count(self) -> int:
        return len(self.starts)

    @property
    def object_shape(self) -> tuple[int, int, int]:
        return make_grid((self.data_shape[0], *self.segment), self.pad, self.factor).object_shape

    def finer(self) -> SegmentPlan:
        """The same plan on the restoration's (fine) grid, for recomposing the result."""
        kz, ky, kx = self.factor
        if self.factor == (1, 1, 1):
            return self
        z, ny, nx = self.data_shape
        return dataclasses.replace(
            self, data_shape=(z * kz, ny * ky, nx * kx), segment=(self.segment[0] * ky, self.segment[1] * kx),
            overlap=(self.overlap[0] * ky, self.overlap[1] * kx), starts=tuple((y * ky, x * kx) for y, x in self.starts),
            margin=(self.margin[0] * ky, self.margin[1] * kx), factor=(1, 1, 1),
        )

    @property
    def peak_bytes(self) -> int:
        """Predicted peak memory of one batch."""
        return _grid_bytes(make_grid((self.data_shape[0], *self.segment), self.pad, self.factor), self.batch)

    def describe(self) -> str:
        ny = len({s[0] for s in self.starts})
        nx = len({s[1] for s in self.starts})
        return (
            f"{self.count} segments ({ny} x {nx}) of {self.data_shape[0]}x{self.segment[0]}x{self.segment[1]}, "
            f"overlap {self.overlap[0]}x{self.overlap[1]}, "
            + ("" if self.factor == (1, 1, 1) else f"restored onto a grid {'x'.join(map(str, self.factor))} finer, ")
            + f"object grid {'x'.join(map(str, self.object_shape))}, "
            f"{self.batch} at a time, predicted peak {self.peak_bytes / 2**20:.0f} MiB"
        )


def _starts(n: int, size: int, overlap: int) -> list[int]:
    if size >= n:
        return [0]
    step = size - overlap
    starts = list(range(0, n - size, step)) + [n - size]
    return sorted(set(starts))


def device_memory(device: jax.Device | None = None) -> int:
    """Bytes the device can hold: a GPU's limit as JAX reports it, or the machine's memory."""
    device = device or jax.devices()[0]
    try:
        stats = device.memory_stats() or {}
    except Exception:  # noqa: BLE001 - not every backend reports
        stats = {}
    if stats.get("bytes_limit"):
        return int(stats["bytes_limit"])
    try:
        return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    except (ValueError, OSError, AttributeError):
        return 8 * 2**30


def plan_segments(
    data_shape: Sequence[int],
    psf: np.ndarray,
    *,
    segment: tuple[int, int] | None = None,
    overlap: tuple[int, int] | None = None,
    pad: Sequence[int] | None = None,
    memory_bytes: int | None = None,
    batch: int | None = None,
    factor: Sequence[int] = (1, 1, 1),
) -> SegmentPlan:
    """The segment plan for data of ``data_shape`` (Z, Y, X), without running anything.

    Args:
        segment: (y, x) segment size in voxels; default: the largest square that, with its
            padding, fits ``memory_bytes`` (or the whole field if it fits).
        overlap: (y, x); default: six times the PSF's lateral half-width, plus 2: the
            margins each segment leaves out at a shared edge (one half-width each) and a wide
            blend between them (segmented and whole restorations then differ by < 1 % of the
            data's range; 3x gave 3 % in the tests), cut to half the segment (with a
            warning) where it would leave the segments advancing by less than a quarter of
            their size; a given overlap that would is refused.
        pad: (z, y, x) padding of each segment; default: the whole volume's (`restore`'s default).
        memory_bytes: the budget; default: half of the device's memory.
        batch: segments restored at once; default: as many as fit the budget.
        factor: (z, y, x): restore onto a grid this many times finer (the PSF sampled on it;
            ``pad`` in its voxels, the rest in data voxels).
    """
    z, ny, nx = (int(n) for n in data_shape)
    factor = factor3(tuple(factor))
    fine_half = psf_half_support(np.asarray(psf))
    half = tuple(-(-h // k) for h, k in zip(fine_half, factor, strict=True))  # in data voxels
    whole = tuple(n * k for n, k in zip((z, ny, nx), factor, strict=True))
    explicit = pad is not None
    pad = tuple(int(p) for p in (pad if explicit else default_pad(np.asarray(psf), whole)))
    if len(pad) != 3 or min(pad) < 0:
        raise ParameterError(f"pad must be (z, y, x) >= 0, got {pad}")
    # a segment's inner edges have real light beyond them: there its padding reaches the
    # PSF's whole lateral half-support (the volume's own edges keep the default's)
    cut_pad = pad if explicit else (pad[0], max(pad[1], fine_half[1]), max(pad[2], fine_half[2]))
    given = overlap is not None
    overlap = tuple(int(o) for o in (overlap if given else (6 * max(1, half[1]) + 2, 6 * max(1, half[2]) + 2)))
    if len(overlap) != 2 or min(overlap) < 0:
        raise ParameterError(f"overlap must be (y, x) >= 0 voxels, got {overlap}")
    budget = int(memory_bytes if memory_bytes is not None else MEMORY_MARGIN * device_memory())
    chosen = segment is None

    def need(trial: tuple[int, int], padding: tuple[int, ...] = cut_pad) -> int:
        """Predicted peak bytes of one segment of ``trial`` (y, x) voxels."""
        return _grid_bytes(make_grid((z, *trial), padding, factor))

    if chosen:
        side = max(ny, nx)
        if need((ny, nx), pad) > budget:
            # the smallest segment to choose overlaps its neighbours on at most half its width;
            # if even that does not fit, say so at once
            smallest = max(2, 2 * max(overlap))
            if need((min(smallest, ny), min(smallest, nx))) > budget:
                raise ParameterError(
                    f"one segment of {z}x{min(smallest, ny)}x{min(smallest, nx)} voxels (the smallest that overlaps its "
                    f"neighbours by {overlap[0]}x{overlap[1]} on at most half its width), padded by {cut_pad[1]}x{cut_pad[2]}, "
                    f"needs about {need((min(smallest, ny), min(smallest, nx))) / 2**20:.0f} MiB, over the budget of "
                    f"{budget / 2**20:.3g} MiB: give more memory, or a smaller -pad or -overlap"
                )
            over = side  # the smallest side known not to fit
            while side > smallest and need((min(side, ny), min(side, nx))) > budget:
                over, side = side, max(smallest, min(side - 1, math.ceil(side * 0.85)))
            while over - side > 1:  # then the largest side that fits, by bisection
                middle = (side + over) // 2
                side, over = (middle, over) if need((min(middle, ny), min(middle, nx))) <= budget else (side, middle)
        segment = (min(side, ny), min(side, nx))
    segment = (min(int(segment[0]), ny), min(int(segment[1]), nx))
    overlap = list(overlap)
    for axis, (s, o) in enumerate(zip(segment, overlap, strict=True)):
        n = (ny, nx)[axis]
        if s >= n or 4 * (s - o) >= s:
            continue  # the segments advance by at least a quarter of their size
        if not given:
            # the default overlap (six PSF half-widths) close to the segment's size would
            # restore every voxel many times over (segments advancing by a few voxels): half
            log.warning(
                "segments of %d voxels along %s: the overlap is reduced from %d (six PSF half-widths + 2) to %d, half a "
                "segment (the segments' edges then differ more from a whole restoration; larger segments avoid it)",
                s, "YX"[axis], o, s // 2,
            )
            overlap[axis] = s // 2
        elif s <= o:
            raise ParameterError(f"segments of {segment} voxels cannot overlap by {tuple(overlap)}: make them larger than the overlap")
        else:
            raise ParameterError(
                f"segments of {s} voxels overlapping by {o} along {'YX'[axis]} advance by {s - o} voxels, restoring every voxel "
                f"about {s / (s - o):.0f} times over in each direction: give an overlap of at most three quarters of the segment ({3 * s // 4}), or larger segments"
            )
    overlap = tuple(overlap)
    starts = tuple((y, x) for y in _starts(ny, segment[0], overlap[0]) for x in _starts(nx, segment[1], overlap[1]))
    if len(starts) > 1:
        pad = cut_pad
    per = need(segment, pad)
    if per > budget and memory_bytes is not None:
        raise ParameterError(
            f"one {z}x{segment[0]}x{segment[1]} segment needs about {per / 2**20:.0f} MiB, over the budget of {budget / 2**20:.0f} MiB"
        )
    fixed = segment_bytes(0)
    fit = max(1, (budget - fixed) // max(per - fixed, 1))
    batch = int(batch) if batch is not None else int(min(len(starts), fit))
    if batch < 1:
        raise ParameterError(f"batch must be >= 1, got {batch}")
    margin = tuple(min(half[1 + a], max(0, (overlap[a] - 2) // 2)) for a in range(2))
    return SegmentPlan((z, ny, nx), segment, overlap, starts, pad, batch, margin, factor)  # type: ignore[arg-type]


def _ramp(n: int, overlap: int, margin: int, before: bool, after: bool) -> np.ndarray:
    """Weights along one axis of a segment: at an end that meets another segment, 0 over the
    ``margin`` voxels at the edge, then a raised-cosine rise over the rest of the overlap
    (``overlap - 2 margin`` voxels, where the neighbour's weight falls the same way: the two
    sum to 1); 1 elsewhere."""
    w = np.ones(n)
    width = overlap - 2 * margin
    if width > 0:
        rise = 0.5 - 0.5 * np.cos(np.pi * (np.arange(width) + 0.5) / width)
        edge = np.concatenate([np.zeros(margin), rise])
        if before:
            w[: len(edge)] = edge
        if after:
            w[n - len(edge) :] = edge[::-1]
    return w


def weight(plan: SegmentPlan, index: int) -> np.ndarray:
    """(y, x) recomposition weights of segment ``index``."""
    ys = sorted({s[0] for s in plan.starts})
    xs = sorted({s[1] for s in plan.starts})
    y, x = plan.starts[index]
    wy = _ramp(plan.segment[0], plan.overlap[0], plan.margin[0], y != ys[0], y != ys[-1])
    wx = _ramp(plan.segment[1], plan.overlap[1], plan.margin[1], x != xs[0], x != xs[-1])
    return wy[:, None] * wx[None, :]


def weights(plan: SegmentPlan) -> np.ndarray:
    """(segments, y, x) recomposition weights."""
    return np.stack([weight(plan, i) for i in range(plan.count)])


def weight_total(plan: SegmentPlan) -> np.ndarray:
    """(Y, X): the sum of the segments' weights over the volume (what `recompose` divides by)."""
    total = np.zeros(plan.data_shape[1:], np.float64)
    sy, sx = plan.segment
    for i, (y, x) in enumerate(plan.starts):
        total[y : y + sy, x : x + sx] += weight(plan, i)
    return total


def cut(data: np.ndarray, plan: SegmentPlan) -> np.ndarray:
    """(segments, Z, sy, sx): the segments, stacked."""
    sy, sx = plan.segment
    return np.stack([np.asarray(data[:, y : y + sy, x : x + sx]) for y, x in plan.starts])


def segment_totals(region: Callable[[int, int], np.ndarray], plan: SegmentPlan) -> np.ndarray:
    """Each segment's total intensity (for `representative`). ``region(y, x)``: the segment
    starting there."""
    return np.array([float(np.sum(region(y, x), dtype=np.float64)) for y, x in plan.starts])


def representative(totals: np.ndarray, count: int = 3, keep: int | None = None) -> list[int]:
    """Indices, in order, of up to ``count`` segments spanning what the volume holds, for
    tuning one alpha for all: by total intensity (``totals``, `segment_totals`), the
    brightest and those at evenly spaced quantiles down to the median (the dimmer half,
    mostly background, says little about alpha). ``keep``: only the ``keep`` brightest of
    those."""
    order = np.argsort(totals)
    picks = sorted({int(order[int(round(q * (len(order) - 1)))]) for q in np.linspace(1.0, 0.5, max(1, count))})
    if keep is not None and keep < len(picks):
        picks = sorted(sorted(picks, key=lambda i: -totals[i])[: max(keep, 1)])
    return picks


def recompose(restored, plan: SegmentPlan) -> np.ndarray:
    """The volume from its restored segments, blended with `weights`."""
    out = np.zeros(plan.data_shape, np.float64)
    sy, sx = plan.segment
    for i, ((y, x), segment) in enumerate(zip(plan.starts, np.asarray(restored), strict=True)):
        out[:, y : y + sy, x : x + sx] += segment * weight(plan, i)
    return (out / weight_total(plan)).astype(np.float32)
