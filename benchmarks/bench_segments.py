"""A volume restored whole and in overlapping segments, side by side: time and agreement.

    python benchmarks/bench_segments.py [--shape 32x512x512] [--segment 320] [--out table.md]

The seed's optics and the demo's specimen (scaled to the shape), Poisson noise; the padded
model; alpha 5e-4, -co 0.001. Segments of --segment x --segment voxels with the default
overlap, batched (vmap inside lax.map) on the one device; the table gives both wall times
(compilation included and excluded: the second run of each) and the largest difference
between the two restorations relative to the whole one's range.
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np

import eprjax
from eprjax._simulate import SEED_OPTICS, specimen


def simulated_volume(shape: tuple[int, int, int]) -> tuple[np.ndarray, np.ndarray]:
    """(data, PSF): the demo's specimen tiled over the field (tiles of at most 256x256: its
    cost grows with the volume squared), blurred by the seed's widefield PSF, with Poisson
    noise over a background of 10."""
    psf = np.asarray(eprjax.widefield_psf((24, 48, 48), **SEED_OPTICS))
    tile = specimen((shape[0], min(shape[1], 256), min(shape[2], 256)), z_over_xy=SEED_OPTICS["z_step_um"] / SEED_OPTICS["pixel_size_um"], seed=3) / 50
    reps = (1, -(-shape[1] // tile.shape[1]), -(-shape[2] // tile.shape[2]))
    truth = np.tile(tile.astype(np.float32), reps)[:, : shape[1], : shape[2]]
    kernel = np.zeros(shape, np.float32)
    kernel[tuple(slice(n // 2 - p // 2, n // 2 - p // 2 + p) for n, p in zip(shape, psf.shape, strict=True))] = psf
    blurred = np.asarray(jnp.fft.irfftn(jnp.fft.rfftn(truth) * jnp.fft.rfftn(jnp.fft.ifftshift(kernel)), s=shape))
    del truth, kernel
    g = (np.random.default_rng(0).poisson(np.maximum(blurred, 0) + 10.0) - 10.0).astype(np.float32)
    return g, psf


def edge_steps(diff: np.ndarray, edges: list[int], width: int) -> tuple[float, float]:
    """The largest voxel-to-voxel step of ``diff`` (a restoration minus the whole one) along
    X within ``width`` of one of the pieces' shared ``edges`` (a seam), and elsewhere."""
    steps = np.abs(np.diff(diff, axis=2))
    near = np.zeros(steps.shape[2], bool)
    for e in edges:
        near[max(0, e - width) : e + width] = True
    return float(steps[:, :, near].max()), float(steps[:, :, ~near].max()) if (~near).any() else 0.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", default="32x512x512")
    parser.add_argument("--segment", type=int, default=320)
    parser.add_argument("--out", help="also write the Markdown table here")
    args = parser.parse_args()
    shape = tuple(int(n) for n in args.shape.split("x"))
    g, psf = simulated_volume(shape)
    plan = eprjax.plan_segments(g.shape, psf, segment=(args.segment, args.segment))
    rows = ["| how | wall time, first run | wall time, second run | iterations (most) | max difference / range |", "|---|---|---|---|---|"]
    results = {}
    for how, kwargs in (("whole", {}), (f"{plan.count} segments of {args.segment}x{args.segment}", {"segment": (args.segment, args.segment)})):
        times = []
        for _ in range(2):
            started = time.perf_counter()
            sol = eprjax.restore(g, psf, alpha=5e-4, **kwargs)
            value = np.asarray(sol.value)
            times.append(time.perf_counter() - started)
        results[how] = value
        difference = np.abs(value - results["whole"]).max() / np.ptp(results["whole"])
        rows.append(f"| {how} | {times[0]:.1f} s | {times[1]:.1f} s | {int(np.max(np.asarray(sol.iterations)))} | {difference:.2%} |")
        print(rows[-1], flush=True)
    table = "\n".join(rows)
    print(f"\n{'x'.join(map(str, shape))} voxels, {plan.describe()}, device {jax.devices()[0]}\n\n{table}")
    if args.out:
        with open(args.out, "w") as out:
            out.write(f"{'x'.join(map(str, shape))} voxels; {plan.describe()}.\n\n{table}\n")


if __name__ == "__main__":
    main()
