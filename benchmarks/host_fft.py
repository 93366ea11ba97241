"""The CPU's FFT libraries side by side, and the EPR iteration on each (EPRJAX_FFT=xla|host).

    python benchmarks/host_fft.py                                # 64x256x256 and 128x512x512
    python benchmarks/host_fft.py --sizes 32x128x128 64x128x128 --repeats 5

Per size, in one run: one real-FFT pair (rfftn + irfftn) in XLA (jit), in scipy.fft and in
ducc0 with all allowed threads (NumPy arrays), and the operator's host convolution called
from a compiled program (the callback, its copies and the OTF product included); then the
EPR iteration, periodic and padded (the default grid), with XLA's FFT and with the host FFT,
and its ratio to two scipy.fft pairs on the same grid: the issue's measure. Every figure is
the median of --repeats timed calls after a warm-up, with the spread.
"""

from __future__ import annotations

import argparse
import os
import sys

import ducc0
import jax
import jax.numpy as jnp
import numpy as np
import scipy.fft

from bench_restore import epr_iterations, gaussian_psf, test_image, timed
from eprjax import _fft
from eprjax._operator import default_pad, make_grid, psf_otf


def _use(mode: str) -> None:
    os.environ["EPRJAX_FFT"] = mode
    _fft.forget_traces()


def scipy_pair(shape):
    """One scipy.fft real-FFT pair on ``shape`` with all allowed threads, as a callable."""
    threads = _fft.fft_threads()
    x = np.random.default_rng(1).random(shape, np.float32)
    return lambda: scipy.fft.irfftn(scipy.fft.rfftn(x, workers=threads), s=shape, workers=threads)


def pairs(shape, repeats: int) -> dict[str, tuple[float, float, float]]:
    threads = _fft.fft_threads()
    x = np.random.default_rng(1).random(shape, np.float32)
    xj = jnp.asarray(x)
    otf, _ = psf_otf(jnp.asarray(gaussian_psf()), make_grid(shape, (0, 0, 0)))
    xla = jax.jit(lambda x: jnp.fft.irfftn(jnp.fft.rfftn(x), s=shape))

    def ducc():
        spectrum = ducc0.fft.r2c(x, axes=(0, 1, 2), nthreads=threads)
        return ducc0.fft.c2r(spectrum, axes=(0, 1, 2), lastsize=shape[-1], inorm=2, nthreads=threads)

    found = {
        "XLA (jit), 1 thread": lambda: xla(xj),
        f"scipy.fft, {threads} threads": scipy_pair(shape),
        f"ducc0 {ducc0.__version__}, {threads} threads": ducc,
    }
    _use("host")
    host = jax.jit(lambda x: _fft.convolve(x, otf, shape))
    found["host convolution from jit (callback, copies, OTF product)"] = lambda: host(xj)
    return {name: timed(fn, repeats)[1:] for name, fn in found.items()}


def iterations(shape, repeats: int) -> list[tuple[str, str, float, float, float]]:
    psf = gaussian_psf()
    g = test_image(shape, psf)
    rows = []
    n = 5
    for label, grid in (("periodic", make_grid(shape, (0, 0, 0))), ("padded", make_grid(shape, default_pad(psf, shape)))):
        for mode in ("xla", "host"):
            _use(mode)
            _, s, lo, hi = timed(epr_iterations(g, psf, grid, n, repeats), repeats)
            rows.append((label, mode, s / n, lo / n, hi / n, grid.object_shape))
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", nargs="+", default=["64x256x256", "128x512x512"])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    device = jax.devices()[0]
    print(f"Device: {device.platform}, {os.cpu_count()} CPU cores ({_fft.fft_threads()} allowed), JAX {jax.__version__}, "
          f"SciPy {scipy.__version__}; load {os.getloadavg()[0]:.2f}; median of {args.repeats} (min-max); float32\n")
    print("| size | what | s | spread | x scipy.fft pair |\n|---|---|---|---|---|")
    for size in args.sizes:
        shape = tuple(int(n) for n in size.lower().split("x"))
        measured = pairs(shape, args.repeats)
        ref = next(v[0] for k, v in measured.items() if k.startswith("scipy"))
        for name, (s, lo, hi) in measured.items():
            print(f"| {size} | one real-FFT pair: {name} | {s:.4f} | {lo:.4f}-{hi:.4f} | {s / ref:.2f} |", flush=True)
        for label, mode, s, lo, hi, grid_shape in iterations(shape, args.repeats):
            grid_pair = ref if label == "periodic" else timed(scipy_pair(grid_shape), args.repeats)[1]
            print(f"| {size} | EPR iteration, {label} ({'x'.join(map(str, grid_shape))}), EPRJAX_FFT={mode} | {s:.4f} | "
                  f"{lo:.4f}-{hi:.4f} | {s / grid_pair:.2f} (two pairs: {s / (2 * grid_pair):.2f}) |", flush=True)
    print(f"\nload at the end {os.getloadavg()[0]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
