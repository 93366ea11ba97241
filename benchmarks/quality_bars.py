"""Restoration quality on data with a known ground truth: the flowdec "hollow bars" (EPFL BIG
sample set, downsampled 25 %, from ../shared/data), EPR over a sweep of alpha beside
Richardson-Lucy at 10 to 200 iterations.

    python benchmarks/quality_bars.py [--data ../shared/data] [--out table.md]

NRMSE = ||a f - truth|| / ||truth|| with the best scalar a; circular (periodic) model, the
shipped kernel normalised to sum 1, as ANCHORS.md measured the peers.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

import eprjax

ALPHAS = (1e-1, 1e-2, 1e-3, 1e-4, 1e-5)
RL_ITERATIONS = (10, 25, 50, 100, 200)


def nrmse(f: np.ndarray, truth: np.ndarray) -> float:
    f, truth = np.asarray(f, np.float64).ravel(), np.asarray(truth, np.float64).ravel()
    a = f @ truth / (f @ f)
    return float(np.linalg.norm(a * f - truth) / np.linalg.norm(truth))


def richardson_lucy(g: np.ndarray, psf: np.ndarray, checkpoints) -> dict[int, np.ndarray]:
    """Plain Richardson-Lucy with circular convolution, from a flat start (float64)."""
    kernel = np.fft.ifftshift(psf.astype(np.float64))
    otf = np.fft.rfftn(kernel)
    g = np.maximum(g.astype(np.float64), 0)
    f = np.full(g.shape, g.mean())
    out = {}
    for k in range(1, max(checkpoints) + 1):
        est = np.fft.irfftn(np.fft.rfftn(f) * otf, s=g.shape, axes=(0, 1, 2))
        f = f * np.fft.irfftn(np.fft.rfftn(g / np.maximum(est, 1e-12)) * np.conj(otf), s=g.shape, axes=(0, 1, 2))
        if k in checkpoints:
            out[k] = f.copy()
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "data")
    parser.add_argument("--tol", type=float, default=1e-4)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    folder = args.data / "flowdec" / "bars-25pct"
    if not folder.is_dir():
        print(f"no data at {folder}", file=sys.stderr)
        return 1
    truth = np.asarray(eprjax.read(folder / "actual.tif"), np.float32)
    g = np.asarray(eprjax.read(folder / "data.tif"), np.float32)
    psf = np.asarray(eprjax.read(folder / "kernel.tif"), np.float32)
    psf = psf / psf.sum()
    lines = [
        f"flowdec bars {'x'.join(map(str, g.shape))}; NRMSE after the best scalar fit; periodic model; "
        f"EPR to tol {args.tol:g}.",
        "",
        "| method | setting | NRMSE | iterations | time (s) |",
        "|---|---|---|---|---|",
        f"| the data | | {nrmse(g, truth):.3f} | | |",
    ]
    for alpha in ALPHAS:
        eprjax.restore(g, psf, alpha=alpha, pad=0, tol=args.tol, max_iterations=2000)  # compile
        start = time.perf_counter()
        sol = eprjax.restore(g, psf, alpha=alpha, pad=0, tol=args.tol, max_iterations=2000)
        elapsed = time.perf_counter() - start
        lines.append(f"| EPR | alpha {alpha:g} | {nrmse(sol.value, truth):.3f} | {int(sol.iterations)} | {elapsed:.2f} |")
    start = time.perf_counter()
    restored = richardson_lucy(g, psf, set(RL_ITERATIONS))
    elapsed = time.perf_counter() - start
    for k in RL_ITERATIONS:
        lines.append(f"| Richardson-Lucy (NumPy, float64) | {k} iterations | {nrmse(restored[k], truth):.3f} | {k} | {elapsed * k / max(RL_ITERATIONS):.2f} |")
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        args.out.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
