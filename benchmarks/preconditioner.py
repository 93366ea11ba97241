"""Time to convergence with and without the solver's preconditioner (EPRJAX_PRECONDITION),
side by side in one run.

    python benchmarks/preconditioner.py [--shape 64,256,256] [--alphas 1e-3,1e-4] [--objects beads,dense]
                                        [--grids padded,periodic] [--tol 1e-3] [--warm]

For each object (sparse beads; a dense, tissue-like texture), grid (padded: the default; periodic)
and alpha: the simulated image (Gaussian PSF sigma (4, 1.5, 1.5) in 31^3, 1 % Gaussian noise)
restored to ``--tol`` by `eprjax.restore` with EPRJAX_PRECONDITION=none and =auto, one after the
other: iterations, seconds, and the relative difference between the two results. ``--warm``:
each restoration is run twice and the second timed (no compilation); otherwise once, its
compilation included. ``--filed``: the unpreconditioned run is the iteration as issue 16 was
filed, in real space on the periodic grid too (`_restore.SPECTRAL = False`; since 2026-12-06
the periodic unweighted iteration runs on spectra, one FFT pair per iteration instead of two).
The process sets the allocator as `epr` does for a volume restored whole (one arena, freed
memory kept).

History: the first trial of this preconditioner (session of 2026-12-05) applied the Fourier
filter to the padded grid's dual by zero-padding it, undamped; at 24x96x96 that took more
iterations than none on the padded grid (the filter's gain 1/lam amplified the truncation at the
data's edges) and gained only for dense objects on the periodic grid. The cosine basis for the
padded grid and the damping mu s^2 (PRECONDITION_SHIFT) came out of the second (2026-12-06):
at 24x96x96, padded, iterations none -> (mu 0, 1e-2, 1e-1): dense alpha 1e-3 100 -> 51, 32, 38;
dense 1e-4 326 -> 260, 103, 145; beads 1e-3 79 -> 80, 57, 54; beads 1e-4 137 -> 354, 157, 134.
"""

from __future__ import annotations

import argparse
import os
import time

import eprjax_launch

eprjax_launch.one_arena()  # as the commands start (before JAX's threads allocate)

import jax  # noqa: E402
import numpy as np  # noqa: E402

import eprjax  # noqa: E402
from eprjax import _fft, _restore  # noqa: E402
from eprjax._operator import centre_psf, default_pad  # noqa: E402
from eprjax._stream import keep_freed_memory  # noqa: E402


def gaussian_psf(shape, sigma):
    axes = [np.arange(n) - n // 2 for n in shape]
    zz, yy, xx = np.meshgrid(*axes, indexing="ij")
    h = np.exp(-0.5 * ((zz / sigma[0]) ** 2 + (yy / sigma[1]) ** 2 + (xx / sigma[2]) ** 2))
    return (h / h.sum()).astype(np.float32)


def objects(shape, kind, seed=0):
    """Sparse beads (one per 3000 voxels), or a dense positive texture (smoothed noise, its
    lowest fifth cut to zero)."""
    rng = np.random.default_rng(seed)
    if kind == "beads":
        f = np.zeros(shape)
        n = int(np.prod(shape) // 3000)
        f[tuple(rng.integers(0, s, n) for s in shape)] = rng.uniform(50, 200, n)
        return f
    x = rng.normal(size=shape)
    k = np.fft.fftn(np.fft.ifftshift(gaussian_psf(shape, (2, 4, 4)).astype(np.float64)))
    t = np.real(np.fft.ifftn(np.fft.fftn(x) * k))
    t = np.maximum(t - 0.2 * t.std(), 0)
    return 100 * t / t.max()


def image(shape, kind, psf):
    truth = objects(shape, kind)
    g = np.real(np.fft.ifftn(np.fft.fftn(truth) * np.fft.fftn(np.fft.ifftshift(centre_psf(psf, shape)))))
    rng = np.random.default_rng(1)
    return (g + 0.01 * g.max() * rng.normal(size=shape)).astype(np.float32)


def run(g, psf, alpha, tol, pad, mode, warm, spectral=True):
    os.environ["EPRJAX_PRECONDITION"] = mode
    _restore.SPECTRAL = spectral
    _fft.forget_traces()
    restore = lambda: eprjax.restore(g, psf, alpha=alpha, tol=tol, max_iterations=5000, pad=pad)  # noqa: E731
    if warm:
        jax.block_until_ready(restore().value)
    began = time.perf_counter()
    sol = restore()
    value = np.asarray(sol.value)
    return value, int(sol.iterations), time.perf_counter() - began


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", default="64,256,256")
    parser.add_argument("--alphas", default="1e-3,1e-4")
    parser.add_argument("--objects", default="beads,dense")
    parser.add_argument("--grids", default="padded,periodic")
    parser.add_argument("--tol", type=float, default=1e-3)
    parser.add_argument("--warm", action="store_true")
    parser.add_argument("--filed", action="store_true", help="the unpreconditioned run in real space (as filed)")
    args = parser.parse_args()
    keep_freed_memory()
    shape = tuple(int(x) for x in args.shape.split(","))
    psf = gaussian_psf((31, 31, 31), (4, 1.5, 1.5))
    print(f"{'x'.join(map(str, shape))}, tol {args.tol:g}, {jax.devices()[0].platform}, {os.cpu_count()} cores; "
          f"{'warm (compiled)' if args.warm else 'compilation included'}; FFT: {_fft.describe(shape, jax.devices()[0].platform)}")
    none = "none, real space (as filed)" if args.filed else "none"
    print(f"| object | grid | alpha | {none}: iterations, s | preconditioned: iterations, s | speed-up | relative difference |")
    print("|---|---|---|---|---|---|---|")
    for kind in args.objects.split(","):
        g = image(shape, kind, psf)
        for grid in args.grids.split(","):
            pad = None if grid == "padded" else 0
            if pad is None:
                pad = default_pad(psf, shape)
            for alpha in (float(a) for a in args.alphas.split(",")):
                f0, k0, t0 = run(g, psf, alpha, args.tol, pad, "none", args.warm, spectral=not args.filed)
                f1, k1, t1 = run(g, psf, alpha, args.tol, pad, "auto", args.warm)
                diff = np.linalg.norm(f1 - f0) / np.linalg.norm(f0)
                print(f"| {kind} | {grid} | {alpha:g} | {k0}, {t0:.1f} | {k1}, {t1:.1f} | {t0 / t1:.2f}x | {diff:.1e} |", flush=True)


if __name__ == "__main__":
    main()
