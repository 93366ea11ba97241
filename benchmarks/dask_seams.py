"""Why `restore` returns no dask graph: independent restorations of dask blocks
(`dask.array.map_overlap`) against eprjax's segments, both compared with the whole
restoration.

    python benchmarks/dask_seams.py [--shape 24x224x224] [--block 112] [--out table.md]

The volume and PSF of `overlap.py` (the demo's specimen with Poisson noise, a widefield PSF
of the seed's optics, half-width 12 voxels); alpha 5e-4, -co 1e-4. Each way cuts the volume
into XY pieces of --block voxels with three PSF half-widths (+2) of overlap:

- dask: `map_overlap` hands each block its neighbours' voxels to that depth (the volume's
  own edges filled by --boundary), each is restored by `eprjax.restore` with its defaults
  (the padded model), and the results are cropped back and butted together;
- eprjax: `restore(..., segment=, overlap=)`, which leaves each segment's edge margin out
  and blends neighbours across the rest of the overlap.

For each: the largest difference to the whole restoration, and the largest voxel-to-voxel
step of that difference at the pieces' shared edges (a seam) against elsewhere, all
relative to the whole restoration's range.
"""

from __future__ import annotations

import argparse
import time

import dask
import dask.array as da
import jax
import numpy as np

import eprjax
from eprjax._operator import psf_half_support
from eprjax._simulate import SEED_OPTICS

from bench_segments import edge_steps, simulated_volume


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", default="24x224x224")
    parser.add_argument("--block", type=int, default=112)
    parser.add_argument("--boundary", default="reflect", help="map_overlap's boundary: reflect, nearest, periodic, none")
    parser.add_argument("--tol", type=float, default=1e-4)
    parser.add_argument("--out")
    args = parser.parse_args()
    shape = tuple(int(n) for n in args.shape.split("x"))
    g, _ = simulated_volume(shape)
    psf = np.asarray(eprjax.widefield_psf((16, 24, 24), **SEED_OPTICS))
    half = int(psf_half_support(psf)[1])
    overlap = 3 * half + 2
    options = dict(alpha=5e-4, tol=args.tol, max_iterations=3000)
    b = args.block
    t = time.perf_counter()
    whole = np.asarray(eprjax.restore(g, psf, **options).value, np.float64)
    whole_s = time.perf_counter() - t
    span = float(whole.max() - whole.min())
    edges = list(range(b, shape[2], b))

    def one_block(block: np.ndarray) -> np.ndarray:
        return np.asarray(eprjax.restore(block, psf, **options).value)

    blocks = da.from_array(g, chunks=(shape[0], b, b))
    lazy = blocks.map_overlap(one_block, depth={0: 0, 1: overlap, 2: overlap}, boundary=args.boundary, dtype=np.float32)
    t = time.perf_counter()
    with dask.config.set(scheduler="synchronous"):
        by_dask = np.asarray(lazy.compute(), np.float64)
    dask_s = time.perf_counter() - t
    t = time.perf_counter()
    ours = np.asarray(eprjax.restore(g, psf, segment=(b, b), overlap=(overlap, overlap), **options).value, np.float64)
    ours_s = time.perf_counter() - t
    rows = [
        "| pieces | max difference to whole / range | largest step at a shared edge / range | largest step elsewhere / range | seconds |",
        "|---|---|---|---|---|",
        f"| whole volume | 0 | - | - | {whole_s:.1f} |",
    ]
    for name, result, seconds in (
        (f"dask map_overlap, blocks {b}x{b}, depth {overlap}, boundary {args.boundary}", by_dask, dask_s),
        (f"eprjax segments {b}x{b}, overlap {overlap}", ours, ours_s),
    ):
        diff = result - whole
        at_edge, elsewhere = edge_steps(diff, edges, overlap)
        rows.append(f"| {name} | {np.abs(diff).max() / span:.2%} | {at_edge / span:.2%} | {elsewhere / span:.2%} | {seconds:.1f} |")
        print(rows[-1], flush=True)
    table = "\n".join(rows) + (
        f"\n\n({args.shape} voxels, PSF half-width {half} voxels, -co {args.tol:g}, {jax.devices()[0].platform}, "
        f"JAX {jax.__version__}, dask {dask.__version__}; times include compiling)\n"
    )
    print(table)
    if args.out:
        with open(args.out, "w") as f:
            f.write(table)


if __name__ == "__main__":
    main()
