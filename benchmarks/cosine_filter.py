"""The preconditioner's cosine filter (the padded grid's M, see `eprjax._restore`) on XLA and on
the host, side by side in one run, against the real-FFT pair it is measured by.

    python benchmarks/cosine_filter.py [--sizes 32x128x128 48x192x192 64x256x256] [--repeats 9]

Each row: the median seconds (of ``--repeats``, after a compiled warm-up) of, under `jax.jit`,

- jax.scipy.fft's separable DCT-II and its inverse around the product (a complex FFT per axis:
  the filter's first implementation);
- eprjax's XLA filter (one real 3-D FFT pair of Makhoul's reordering, `eprjax._fft._cosine_xla`);
- ducc0's DCTs called back from the compiled program (`_cosine_host`; what the CPU runs where the
  grid is large enough for the host FFT);
- one real-FFT pair (rfftn, product, irfftn) on the same grid, for scale;

and the largest difference of eprjax's XLA filter from SciPy's DCTs in double precision.
"""

from __future__ import annotations

import argparse
import os
import time

import jax
import jax.numpy as jnp
import jax.scipy.fft as jsf
import numpy as np
import scipy.fft

from eprjax import _fft

AXES = (-3, -2, -1)


def separable(x, inv):
    return jsf.idctn(jsf.dctn(x, type=2, axes=AXES, norm="ortho") * inv, type=2, axes=AXES, norm="ortho")


def fft_pair(x, inv):
    return jnp.fft.irfftn(jnp.fft.rfftn(x, axes=AXES) * inv[..., : x.shape[-1] // 2 + 1], s=x.shape, axes=AXES)


def median_seconds(function, x, inv, repeats: int) -> float:
    compiled = jax.jit(function)
    jax.block_until_ready(compiled(x, inv))
    times = []
    for _ in range(repeats):
        began = time.perf_counter()
        jax.block_until_ready(compiled(x, inv))
        times.append(time.perf_counter() - began)
    return float(np.median(times))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", nargs="+", default=["32x128x128", "48x192x192", "64x256x256"])
    parser.add_argument("--repeats", type=int, default=9)
    args = parser.parse_args()
    print(f"{jax.devices()[0].platform}, {os.cpu_count()} cores, host FFT threads {_fft.fft_threads()}; seconds, median of {args.repeats}")
    print("| size | jax.scipy.fft DCTs | eprjax XLA (one FFT pair) | ducc0 (callback) | one real-FFT pair | XLA filter vs SciPy, float64 |")
    print("|---|---|---|---|---|---|")
    rng = np.random.default_rng(0)
    for text in args.sizes:
        shape = tuple(int(n) for n in text.split("x"))
        x64, inv64 = rng.standard_normal(shape), rng.uniform(0.5, 2.0, shape)
        want = scipy.fft.idctn(scipy.fft.dctn(x64, norm="ortho") * inv64, norm="ortho")
        with jax.enable_x64(True):
            got = np.asarray(jax.jit(_fft._cosine_xla)(jnp.asarray(x64), jnp.asarray(inv64)))
        error = np.abs(got - want).max() / np.abs(want).max()
        x, inv = jnp.asarray(x64, jnp.float32), jnp.asarray(inv64, jnp.float32)
        times = [median_seconds(f, x, inv, args.repeats) for f in (separable, _fft._cosine_xla, _fft._cosine_host, fft_pair)]
        print(f"| {text} | " + " | ".join(f"{t:.4f}" for t in times) + f" | {error:.1e} |", flush=True)


if __name__ == "__main__":
    main()
