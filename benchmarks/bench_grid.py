"""The object grid: how much padding the light needs, what smaller grids cost in quality and
what they save in time, for a computed widefield PSF whose box is larger than the data.

A specimen that extends past the camera's field (so light from outside comes in) is blurred
by the PSF with a linear convolution (no wrap-around anywhere), photon noise added, and the
field restored with the PSF on object grids padded by different amounts: the full
half-support (what the light of an object at the field's edge reaches), the default, smaller
caps, none (periodic). For each: NRMSE against the truth within the field (after the best
scalar fit) at its best alpha of a small scan, the grid's voxels against the data's, seconds
per iteration; all in one run.

    python benchmarks/bench_grid.py [--scale 1] [--out FILE]

--scale 1 is the issue's case: 48x192x192 data, a 73x241x241 PSF (NA 1.4, 0.187 um pixels,
0.25 um steps); --scale 0.5 halves every size (8x fewer voxels).
"""

from __future__ import annotations

import argparse
import time

import numpy as np

import eprjax
from eprjax._operator import default_pad, describe, make_grid, psf_half_support
from eprjax._simulate import SEED_OPTICS, beyond_the_field

ALPHAS = (1e-4, 3e-4, 1e-3)


def scene(scale: float, seed: int = 0):
    data_shape = tuple(int(round(n * scale)) for n in (48, 192, 192))
    psf_shape = tuple(2 * int(round(n * scale / 2)) + 1 for n in (72, 240, 240))
    h = np.asarray(eprjax.widefield_psf(psf_shape, **SEED_OPTICS), np.float64)
    z_over_xy = SEED_OPTICS["z_step_um"] / SEED_OPTICS["pixel_size_um"]
    data, truth = beyond_the_field(data_shape, h, z_over_xy=z_over_xy, seed=seed)
    return data, h.astype(np.float32), truth


def nrmse(f, truth) -> float:
    f = np.asarray(f, np.float64)
    a = (f * truth).sum() / (f * f).sum()
    return float(np.linalg.norm(a * f - truth) / np.linalg.norm(truth))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scale", type=float, default=1.0)
    parser.add_argument("--out", default=None)
    parser.add_argument("--only", nargs="*", default=None, help="only these rows (full, default, half, quarter, periodic)")
    args = parser.parse_args()
    data, h, truth = scene(args.scale)
    half = psf_half_support(h)
    pads = {"full half-support": half, "default": default_pad(h, data.shape)}
    for fraction in (0.5, 0.25):
        pads[f"half-support x {fraction:g}"] = tuple(int(round(p * fraction)) for p in half)
    pads["periodic"] = (0, 0, 0)
    if args.only:
        pads = {k: v for k, v in pads.items() if any(k.startswith(o) or (o == "half" and "0.5" in k) or (o == "quarter" and "0.25" in k) for o in args.only)}
    lines = [
        f"data {'x'.join(map(str, data.shape))}, PSF {'x'.join(map(str, h.shape))}, NRMSE of the data {nrmse(data, truth):.4f}",
        "| grid | object grid | voxels / data's | s per iteration | best alpha | NRMSE |",
        "|---|---|---|---|---|---|",
    ]
    for name, pad in pads.items():
        grid = make_grid(data.shape, pad)
        results = []
        for alpha in ALPHAS:
            start = time.perf_counter()
            solution = eprjax.restore(data, h, alpha=alpha, pad=pad, tol=1e-3)
            seconds = time.perf_counter() - start
            results.append((nrmse(solution.value, truth), alpha, seconds / max(int(solution.iterations), 1)))
        best = min(results)
        ratio = np.prod(grid.object_shape) / np.prod(data.shape)
        lines.append(f"| {name} {pad} | {describe(grid).split(' in a ')[-1] if not grid.periodic else 'periodic'} | {ratio:.2f} | {np.median([r[2] for r in results]):.3f} | {best[1]:g} | {best[0]:.4f} |")
        print(lines[-1], flush=True)
    text = "\n".join(lines)
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text + "\n")


if __name__ == "__main__":
    main()
