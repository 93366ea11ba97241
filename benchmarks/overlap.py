"""How wide segments must overlap: segmented against whole restorations, for overlaps of
1 to 6 PSF half-widths (the default is six, plus 2).

    python benchmarks/overlap.py [--shape 24x224x224] [--segment 112] [--out table.md]

The simulated volume of `bench_segments.py` (the demo's specimen, Poisson noise over a
background of 10) with a widefield PSF of the seed's optics cut to 16x24x24; alpha 5e-4,
-co 1e-4 (--tol), the padded model. For each overlap: the largest difference to the whole
restoration and the largest voxel-to-voxel step of that difference across the segments'
shared edges (a seam), both relative to the whole restoration's range; the number of
segments and the wall time (compiled beforehand).
"""

from __future__ import annotations

import argparse
import time

import jax
import numpy as np

import eprjax
from eprjax._operator import psf_half_support
from eprjax._simulate import SEED_OPTICS

from bench_segments import edge_steps, simulated_volume


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", default="24x224x224")
    parser.add_argument("--segment", type=int, default=112)
    parser.add_argument("--multiples", default="1,2,3,4,6")
    parser.add_argument("--tol", type=float, default=1e-4)
    parser.add_argument("--out")
    args = parser.parse_args()
    shape = tuple(int(n) for n in args.shape.split("x"))
    g, _ = simulated_volume(shape)
    psf = np.asarray(eprjax.widefield_psf((16, 24, 24), **SEED_OPTICS))
    half = int(psf_half_support(psf)[1])
    options = dict(alpha=5e-4, tol=args.tol, max_iterations=3000)
    started = time.perf_counter()
    whole = np.asarray(eprjax.restore(g, psf, **options).value, np.float64)
    whole_s = time.perf_counter() - started
    span = float(whole.max() - whole.min())
    s = args.segment
    rows = [f"| overlap (half-widths) | overlap, voxels | segments | max difference / range | largest step across an edge / range | elsewhere | seconds |",
            "|---|---|---|---|---|---|---|",
            f"| whole | - | 1 | 0 | - | - | {whole_s:.1f} |"]
    for k in (int(m) for m in args.multiples.split(",")):
        overlap = k * half + 2
        plan = eprjax.plan_segments(shape, psf, segment=(s, s), overlap=(overlap, overlap))
        eprjax.restore(g, psf, segment=(s, s), overlap=(overlap, overlap), **{**options, "max_iterations": 2})  # compile
        t = time.perf_counter()
        seg = np.asarray(eprjax.restore(g, psf, segment=(s, s), overlap=(overlap, overlap), **options).value, np.float64)
        seconds = time.perf_counter() - t
        diff = seg - whole
        edges = sorted({x for _, x in plan.starts if x > 0} | {x + s for _, x in plan.starts if x + s < shape[2]})
        at_edge, elsewhere = edge_steps(diff, edges, overlap)
        rows.append(
            f"| {k} | {overlap} | {plan.count} | {np.abs(diff).max() / span:.2%} | {at_edge / span:.2%} | "
            f"{elsewhere / span:.2%} | {seconds:.1f} |"
        )
        print(rows[-1], flush=True)
    table = "\n".join(rows) + f"\n\n({args.shape} voxels, segments {s}x{s}, -co {args.tol:g}, PSF half-width {half} voxels, {jax.devices()[0].platform}, JAX {jax.__version__})\n"
    print(table)
    if args.out:
        with open(args.out, "w") as f:
            f.write(table)


if __name__ == "__main__":
    main()
