"""eprjax against the peers on the same simulated acquisition: time to a common quality, and
time per iteration, in one run.

    python benchmarks/peers.py --deconwolf /path/to/dw --redlionfish-python /path/to/venv/bin/python

The data: a simulated widefield camera stack (the demo's beads, filament and shell reaching
past the field, the seed's optics, 1000 photons at the brightest blurred voxel, camera noise;
`eprjax._simulate.camera_stack`), less its offset and background, with its ground truth; the
PSF in an odd box (31x63x63: deconwolf refuses even ones). The Richardson-Lucy tools get the
data clipped at zero (they need it non-negative; deconwolf refuses negative values), eprjax
the data as they are.
Quality is the NRMSE to the truth after the best scalar fit (ANCHORS.md's measure).

Each tool runs at several settings: eprjax at several alphas (default tolerance, padded
default grid), deconwolf's accelerated (shb) and plain Richardson-Lucy at several iteration
counts (its default edge handling, 2 threads, float output), RedLionfish's CPU path and a
minimal SciPy Richardson-Lucy loop at several iteration counts. For each: the best NRMSE it
reaches, and the least time at which it reaches the target (the worst of the tools' best
NRMSEs times 1.02 unless --target is given, so that every tool can reach it). Times are wall
seconds of the restoration alone: eprjax's compilation is reported apart, deconwolf runs once
before timing (FFTW's planning is then cached), and deconwolf's figure includes reading and
writing its TIFF files (a few tens of milliseconds at this size).

deconwolf is built from its own repository (`cmake -DENABLE_GPU=OFF
-DCMAKE_BUILD_TYPE=Release ..`) and RedLionfish installed with pip into a separate
environment (it pulls pyopencl); each is left out when not given.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import jax
import numpy as np
import tifffile

import eprjax
from bench_restore import scipy_rl
from eprjax._simulate import SEED_OPTICS, camera_stack


def nrmse(f: np.ndarray, truth: np.ndarray) -> float:
    f, truth = np.asarray(f, np.float64), np.asarray(truth, np.float64)
    scale = float(np.sum(f * truth) / max(np.sum(f * f), 1e-300))
    return float(np.linalg.norm(scale * f - truth) / np.linalg.norm(truth))


def acquisition(shape: tuple[int, int, int], peak: float, seed: int):
    psf = np.array(eprjax.widefield_psf((31, 63, 63), **SEED_OPTICS), np.float32)
    psf /= psf.sum()
    stack = camera_stack(shape, psf, peak_photons=peak, seed=seed)
    data = (stack.counts - stack.offset - stack.background).astype(np.float32)
    return data, psf, stack.truth


def run_eprjax(data, psf, truth, alphas):
    """One row per alpha; the first call (compilation and two iterations; a new alpha does
    not recompile) is timed apart, in the first row."""
    start = time.perf_counter()
    np.asarray(eprjax.restore(data, psf, alpha=alphas[0], max_iterations=2).value)  # the caller's kind: NumPy, done
    compile_s = time.perf_counter() - start
    rows = []
    for alpha in alphas:
        start = time.perf_counter()
        sol = eprjax.restore(data, psf, alpha=alpha)
        f = np.asarray(sol.value)
        seconds = time.perf_counter() - start
        rows.append(dict(tool="eprjax", setting=f"alpha {alpha:g}", iterations=int(sol.iterations), seconds=seconds,
                         nrmse=nrmse(f, truth)))
    rows[0]["compile"] = compile_s
    return rows


def run_deconwolf(dw: str, positive, psf, truth, iterations, method: str, folder: Path):
    image, kernel = folder / "image.tif", folder / "psf.tif"
    tifffile.imwrite(image, positive)
    tifffile.imwrite(kernel, psf)
    out = folder / "out.tif"

    def once(n: int) -> float:
        start = time.perf_counter()
        subprocess.run([dw, "--iter", str(n), "--threads", "2", "--method", method, "--float", "--overwrite",
                        "--out", str(out), str(image), str(kernel)], check=True, capture_output=True, cwd=folder)
        return time.perf_counter() - start

    once(2)  # FFTW plans this size once, and caches the plan
    rows = []
    for n in iterations:
        seconds = once(n)
        rows.append(dict(tool=f"deconwolf {method}", setting=f"{n} iterations", iterations=n, seconds=seconds,
                         nrmse=nrmse(tifffile.imread(out), truth)))
    return rows


RLF_SCRIPT = textwrap.dedent(
    """
    import json, sys, time
    import numpy as np
    import RedLionfishDeconv as rl
    data, psf = np.load(sys.argv[1]), np.load(sys.argv[2])
    out = {}
    for n in json.loads(sys.argv[3]):
        start = time.perf_counter()
        f = rl.doRLDeconvolutionFromNpArrays(data, psf, niter=n, method="cpu")
        out[n] = time.perf_counter() - start
        np.save(f"{sys.argv[4]}_{n}.npy", np.asarray(f, np.float32))
    print(json.dumps(out))
    """
)


def run_redlionfish(python: str, positive, psf, truth, iterations, folder: Path):
    np.save(folder / "data.npy", positive)
    np.save(folder / "psf.npy", psf)
    done = subprocess.run([python, "-c", RLF_SCRIPT, str(folder / "data.npy"), str(folder / "psf.npy"), json.dumps(iterations),
                           str(folder / "rlf")], check=True, capture_output=True, text=True)
    times = json.loads(done.stdout.strip().splitlines()[-1])
    return [dict(tool="RedLionfish CPU", setting=f"{n} iterations", iterations=n, seconds=times[str(n)],
                 nrmse=nrmse(np.load(folder / f"rlf_{n}.npy"), truth)) for n in iterations]


def run_scipy_rl(positive, psf, truth, iterations):
    rows = []
    for n in iterations:
        start = time.perf_counter()
        f = scipy_rl(positive, psf, n)()
        rows.append(dict(tool="Richardson-Lucy, SciPy loop (periodic)", setting=f"{n} iterations", iterations=n,
                         seconds=time.perf_counter() - start, nrmse=nrmse(f, truth)))
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", default="48x192x192")
    parser.add_argument("--peak", type=float, default=1000.0)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--alphas", default="1e-5,3e-5,1e-4,3e-4,1e-3")
    parser.add_argument("--iterations", default="10,20,40,80,160")
    parser.add_argument("--deconwolf", help="the dw executable")
    parser.add_argument("--redlionfish-python", help="a Python with RedLionfish installed")
    parser.add_argument("--target", type=float, help="the NRMSE to reach (default: the worst best, times 1.02)")
    args = parser.parse_args(argv)
    shape = tuple(int(n) for n in args.shape.split("x"))
    iterations = [int(n) for n in args.iterations.split(",")]
    data, psf, truth = acquisition(shape, args.peak, args.seed)
    print(f"{args.shape}, {args.peak:g} photons at the brightest blurred voxel; data NRMSE {nrmse(data, truth):.3f}; "
          f"{jax.devices()[0].platform}, {os.cpu_count()} cores, JAX {jax.__version__}; load {os.getloadavg()[0]:.2f}", flush=True)
    rows = run_eprjax(data, psf, truth, [float(a) for a in args.alphas.split(",")])
    positive = np.maximum(data, 0)  # Richardson-Lucy needs it (deconwolf refuses negative values)
    with tempfile.TemporaryDirectory() as tmp:
        if args.deconwolf:
            for method in ("shb", "rl"):
                rows += run_deconwolf(args.deconwolf, positive, psf, truth, iterations, method, Path(tmp))
        if args.redlionfish_python:
            rows += run_redlionfish(args.redlionfish_python, positive, psf, truth, iterations, Path(tmp))
    rows += run_scipy_rl(positive, psf, truth, iterations)
    tools = list(dict.fromkeys(r["tool"] for r in rows))
    best = {t: min((r for r in rows if r["tool"] == t), key=lambda r: r["nrmse"]) for t in tools}
    target = args.target or 1.02 * max(b["nrmse"] for b in best.values())
    print("\n| tool | setting | iterations | seconds | s per iteration | NRMSE |\n|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['tool']} | {r['setting']} | {r['iterations']} | {r['seconds']:.2f} | {r['seconds'] / max(r['iterations'], 1):.4f} | {r['nrmse']:.4f} |")
    print(f"\nTarget NRMSE {target:.4f}.\n\n| tool | best NRMSE (setting) | least seconds to the target (setting) |\n|---|---|---|")
    for t in tools:
        reached = [r for r in rows if r["tool"] == t and r["nrmse"] <= target]
        fastest = min(reached, key=lambda r: r["seconds"]) if reached else None
        text = f"{fastest['seconds']:.2f} ({fastest['setting']})" if fastest else "not reached"
        print(f"| {t} | {best[t]['nrmse']:.4f} ({best[t]['setting']}) | {text} |")
    print(f"\neprjax's first call (compilation and two iterations), excluded above: {rows[0]['compile']:.1f} s. "
          f"Load at the end {os.getloadavg()[0]:.2f}.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
