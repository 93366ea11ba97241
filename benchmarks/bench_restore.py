"""One EPR iteration against what it cannot avoid (its two real-FFT pairs) and against the
peers' Richardson-Lucy iterations, on the same shape, in the same run.

    python benchmarks/bench_restore.py                      # 64x256x256 and 128x512x512
    python benchmarks/bench_restore.py --sizes 32x128x128 --repeats 5 --out table.md

Needs the `bench` extra (scipy, scikit-image). Every figure is the median of --repeats timed
runs after a warm-up (compilation excluded and reported apart), with the spread (min-max);
ratios are to the two FFT pairs measured on the same grid in the same run, because absolute
times on a shared machine drift.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

import eprjax
from eprjax._operator import make_grid, psf_otf
from eprjax._restore import _solve_advance, _solve_start

PSF_SHAPE, PSF_SIGMA = (31, 31, 31), (4.0, 1.5, 1.5)  # as ANCHORS.md measured the peers


def gaussian_psf() -> np.ndarray:
    axes = [np.arange(n) - n // 2 for n in PSF_SHAPE]
    zz, yy, xx = np.meshgrid(*axes, indexing="ij")
    h = np.exp(-0.5 * sum((a / s) ** 2 for a, s in zip((zz, yy, xx), PSF_SIGMA, strict=True)))
    return (h / h.sum()).astype(np.float32)


def test_image(shape: tuple[int, int, int], psf: np.ndarray) -> np.ndarray:
    rng = np.random.default_rng(0)
    truth = np.zeros(shape, np.float32)
    n = max(50, int(np.prod(shape) // 20000))
    truth[tuple(rng.integers(0, s, n) for s in shape)] = rng.uniform(100, 1000, n)
    grid = make_grid(shape, (0, 0, 0))
    otf, _ = psf_otf(jnp.asarray(psf), grid)
    g = np.asarray(jnp.fft.irfftn(jnp.fft.rfftn(truth) * otf, s=shape))
    return np.maximum(g + 10 + rng.normal(0, 1, shape).astype(np.float32), 0).astype(np.float32)


def timed(fn: Callable[[], object], repeats: int) -> tuple[float, float, float, float]:
    """(first call s, median, min, max) of calls to ``fn``, each blocked until done."""
    start = time.perf_counter()
    jax.block_until_ready(fn())
    first = time.perf_counter() - start
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - start)
    return first, statistics.median(times), min(times), max(times)


def fft_pair(shape):
    @jax.jit
    def pair(x):
        return jnp.fft.irfftn(jnp.fft.rfftn(x), s=shape)

    x = jnp.asarray(np.random.default_rng(1).random(shape, np.float32))
    return lambda: pair(x)


def skimage_rl(g: np.ndarray, psf: np.ndarray, n: int):
    from skimage.restoration import richardson_lucy

    return lambda: richardson_lucy(g, psf, num_iter=n, clip=False)


def scipy_rl(g: np.ndarray, psf: np.ndarray, n: int):
    """A minimal Richardson-Lucy loop with a precomputed OTF and scipy.fft on all cores."""
    import scipy.fft as sfft

    workers = os.cpu_count() or 1
    kernel = np.zeros(g.shape, np.float32)
    kernel[tuple(slice(0, s) for s in psf.shape)] = psf
    kernel = np.roll(kernel, [-(s // 2) for s in psf.shape], axis=(0, 1, 2))
    otf = sfft.rfftn(kernel, workers=workers)
    conj = np.conj(otf)

    def run():
        f = np.full(g.shape, g.mean(), np.float32)
        for _ in range(n):
            est = sfft.irfftn(sfft.rfftn(f, workers=workers) * otf, s=g.shape, workers=workers)
            f = f * sfft.irfftn(sfft.rfftn(g / np.maximum(est, 1e-12), workers=workers) * conj, s=g.shape, workers=workers)
        return f

    return run


def jax_rl(g: np.ndarray, psf: np.ndarray, n: int):
    """A minimal jitted Richardson-Lucy loop in JAX (periodic, precomputed OTF): the peer
    that runs wherever JAX does, on a GPU too."""
    grid = make_grid(g.shape, (0, 0, 0))
    otf, _ = psf_otf(jnp.asarray(psf), grid)
    data = jnp.asarray(g)

    @jax.jit
    def run(data, otf):
        def one(_, f):
            est = jnp.fft.irfftn(jnp.fft.rfftn(f) * otf, s=g.shape)
            ratio = data / jnp.maximum(est, 1e-12)
            return f * jnp.fft.irfftn(jnp.fft.rfftn(ratio) * jnp.conj(otf), s=g.shape)

        return jax.lax.fori_loop(0, n, one, jnp.full(g.shape, jnp.mean(data), data.dtype))

    return lambda: run(data, otf)


def per_iteration(make: Callable[[int], Callable[[], object]], n1: int, n2: int, repeats: int):
    """Seconds per iteration from the difference of n2 and n1 iterations (set-up cancels)."""
    _, t1, lo1, hi1 = timed(make(n1), repeats)  # noqa: F841
    first, t2, lo2, hi2 = timed(make(n2), repeats)
    k = n2 - n1
    return first, (t2 - t1) / k, (lo2 - hi1) / k, (hi2 - lo1) / k


def bench(shape: tuple[int, int, int], repeats: int, skip_skimage: bool, skip_cpu_peers: bool = False) -> list[dict]:
    psf = gaussian_psf()
    g = test_image(shape, psf)
    rows = []
    padded = make_grid(shape, eprjax._operator.default_pad(psf, shape))
    for label, grid_shape in (("data grid", shape), ("padded grid", padded.object_shape)):
        _, median, lo, hi = timed(fft_pair(grid_shape), repeats)
        rows.append(dict(shape=shape, what=f"one real-FFT pair, {label} {'x'.join(map(str, grid_shape))}", s=median, lo=lo, hi=hi, floor=label))
    floors = {row["floor"]: 2 * row["s"] for row in rows}
    n = 10
    for grid, label, name in ((make_grid(shape, (0, 0, 0)), "data grid", "periodic"), (padded, "padded grid", "padded (default)")):
        first, s, lo, hi = timed(epr_iterations(g, psf, grid, n, repeats), repeats)
        rows.append(dict(
            shape=shape, what=f"EPR iteration, {name}", s=s / n, lo=lo / n, hi=hi / n,
            ratio=s / n / floors[label], floor_name=label, compile=first - s,
        ))
    _, s, lo, hi = per_iteration(lambda k: jax_rl(g, psf, k), 2, 6, repeats)
    rows.append(dict(shape=shape, what="Richardson-Lucy, minimal jitted JAX loop", s=s, lo=lo, hi=hi, ratio=s / floors["data grid"], floor_name="data grid"))
    if skip_cpu_peers:
        return rows
    if not skip_skimage:
        _, s, lo, hi = per_iteration(lambda k: skimage_rl(g, psf, k), 1, 3, repeats)
        rows.append(dict(shape=shape, what="Richardson-Lucy, scikit-image (clip=False)", s=s, lo=lo, hi=hi, ratio=s / floors["data grid"], floor_name="data grid"))
    _, s, lo, hi = per_iteration(lambda k: scipy_rl(g, psf, k), 2, 6, repeats)
    rows.append(dict(shape=shape, what="Richardson-Lucy, minimal SciPy loop", s=s, lo=lo, hi=hi, ratio=s / floors["data grid"], floor_name="data grid"))
    return rows


def epr_iterations(g: np.ndarray, psf: np.ndarray, grid, n: int, repeats: int):
    """Advance the solver n iterations from a state 5 iterations in (a realistic active
    set), through the same compiled loop the command line uses."""
    data, h = jnp.asarray(g), jnp.asarray(psf)
    alpha, tol = jnp.float32(1e-4), jnp.float32(1e-12)
    state, otf, lam = _solve_start(data, h, alpha, grid=grid, history_length=0)
    state, _ = jax.block_until_ready(_solve_advance(state, data, otf, lam, tol, jnp.asarray(5), grid=grid, track=False))
    until = jnp.asarray(5 + n)
    # each call uses its state up (donated): one copy per call, made before the timing
    states = iter([jax.tree.map(jnp.copy, state) for _ in range(repeats + 1)])
    return lambda: _solve_advance(next(states), data, otf, lam, tol, until, grid=grid, track=False)


def table(rows: list[dict], repeats: int) -> str:
    device = jax.devices()[0]
    lines = [
        f"Device: {device.platform} ({device.device_kind}), {os.cpu_count()} CPU cores, "
        f"JAX {jax.__version__}, Python {platform.python_version()}; median of {repeats} runs "
        "(spread min-max); PSF Gaussian sigma (4, 1.5, 1.5) voxels in a 31^3 box; float32.",
        "",
        "| size | what | s per iteration | spread | ns per data voxel | x two FFT pairs (same grid) |",
        "|---|---|---|---|---|---|",
    ]
    for row in rows:
        ratio = f"{row['ratio']:.2f} ({row['floor_name']})" if "ratio" in row else "(floor: x2)"
        lines.append(
            f"| {'x'.join(map(str, row['shape']))} | {row['what']} | {row['s']:.4f} | "
            f"{row['lo']:.4f}-{row['hi']:.4f} | {1e9 * row['s'] / np.prod(row['shape']):.2f} | {ratio} |"
        )
    compiles = [f"{'x'.join(map(str, r['shape']))} {r['what'].split(', ')[1]}: {r['compile']:.1f} s" for r in rows if "compile" in r]
    lines += ["", "Compilation (first call, excluded above): " + "; ".join(compiles) + "."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", nargs="+", default=["64x256x256", "128x512x512"])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--skip-skimage", action="store_true", help="leave out scikit-image (slow at large sizes)")
    parser.add_argument("--skip-cpu-peers", action="store_true", help="leave out scikit-image and SciPy (the CPU-only peers)")
    parser.add_argument("--out", type=Path, help="also write the Markdown table here")
    args = parser.parse_args(argv)
    rows = []
    for size in args.sizes:
        shape = tuple(int(n) for n in size.lower().split("x"))
        print(f"benchmarking {size} ...", file=sys.stderr, flush=True)
        rows += bench(shape, args.repeats, args.skip_skimage, args.skip_cpu_peers)
    text = table(rows, args.repeats)
    print(text)
    if args.out:
        args.out.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
