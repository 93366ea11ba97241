"""Choosing alpha without ground truth, against the best alpha with it.

    python benchmarks/tuning.py [--seeds 3,5,7] [--criteria discrepancy,sure,gcv] [--out table.md]

Synthetic widefield acquisitions with a known object: the demo's specimen (beads, a filament,
a shell; each seed another arrangement) at brightness from photon-starved to bright (the
brightest bead's peak, in photons: 20 to 20,000), over a background of 10 photons, blurred by
the seed's optics (NA 1.4, 0.187 um pixels, 0.25 um planes) in a field larger than the
camera's, Poisson noise, the background subtracted. 32x80x80 voxels.

For each: a dense sweep of alpha (21 values, 1e-5 to 1) with the ground truth gives the best
NRMSE = ||f - truth|| / ||truth||; `eprjax.tune_alpha` chooses alpha from the data and the
noise's variance alone (Poisson: the counts); the table gives both NRMSEs and the tuning's
cost in restorations at the chosen alpha (its time over one such restoration's; the first
line of a run includes compiling).
"""

from __future__ import annotations

import argparse
import time

import jax
import numpy as np

import eprjax
from eprjax._simulate import SEED_OPTICS, specimen

BRIGHTNESS = (20, 200, 2000, 20000)
BACKGROUND = 10.0
SHAPE, MARGIN, PAD = (32, 80, 80), (4, 8, 8), (4, 8, 8)


def acquisition(seed: int, brightness: float, psf: np.ndarray):
    big = specimen(SHAPE, z_over_xy=SEED_OPTICS["z_step_um"] / SEED_OPTICS["pixel_size_um"], seed=seed) / 1000 * brightness
    kernel = np.zeros(big.shape)
    kernel[tuple(slice(n // 2 - p // 2, n // 2 - p // 2 + p) for n, p in zip(big.shape, psf.shape, strict=True))] = psf
    blurred = np.real(np.fft.ifftn(np.fft.fftn(big) * np.fft.fftn(np.fft.ifftshift(kernel))))
    inner = tuple(slice(m, n - m) for m, n in zip(MARGIN, SHAPE, strict=True))
    counts = np.random.default_rng(seed).poisson(np.maximum(blurred[inner], 0) + BACKGROUND)
    return (counts - BACKGROUND).astype(np.float32), big[inner], np.maximum(counts, 0).astype(np.float32)


def nrmse(f, truth) -> float:
    return float(np.linalg.norm(np.asarray(f, np.float64) - truth) / np.linalg.norm(truth))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", default="3,5,7")
    parser.add_argument("--criteria", default="discrepancy,sure,gcv")
    parser.add_argument("--out", help="also write the Markdown table here")
    args = parser.parse_args()
    criteria = args.criteria.split(",")
    psf = np.asarray(eprjax.widefield_psf((24, 48, 48), **SEED_OPTICS))
    alphas = np.logspace(-5, 0, 21)
    head = "| object | peak photons | best alpha | best NRMSE | " + " | ".join(f"{c}: alpha, NRMSE (vs best), cost" for c in criteria) + " |"
    rows = [head, "|" + "---|" * (4 + len(criteria))]
    for seed in (int(s) for s in args.seeds.split(",")):
        for brightness in BRIGHTNESS:
            g, truth, variance = acquisition(seed, brightness, psf)
            sweep = [nrmse(eprjax.restore(g, psf, alpha=a, pad=PAD).value, truth) for a in alphas]
            best = int(np.argmin(sweep))
            cells = [f"seed {seed}", f"{brightness:g}", f"{alphas[best]:.2g}", f"{sweep[best]:.3f}"]
            for criterion in criteria:
                started = time.perf_counter()
                tuning = eprjax.tune_alpha(g, psf, criterion=criterion, pad=PAD, noise_variance=None if criterion == "gcv" else variance)
                took = time.perf_counter() - started
                started = time.perf_counter()
                error = nrmse(eprjax.restore(g, psf, alpha=tuning.alpha, pad=PAD).value, truth)
                once = time.perf_counter() - started
                cells.append(f"{tuning.alpha:.2g}, {error:.3f} ({100 * (error / sweep[best] - 1):+.1f} %), {took / once:.0f}x")
            rows.append("| " + " | ".join(cells) + " |")
            print(rows[-1], flush=True)
    table = "\n".join(rows)
    print(f"\n{'x'.join(map(str, g.shape))} voxels, eprjax {eprjax.__version__}, device {jax.devices()[0]}\n\n{table}")
    if args.out:
        with open(args.out, "w") as out:
            out.write(table + "\n")


if __name__ == "__main__":
    main()
