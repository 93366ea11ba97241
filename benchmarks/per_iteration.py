"""One EPR iteration against one of deconwolf's, periodic model, in one interleaved run.

    python benchmarks/per_iteration.py --deconwolf /path/to/dw
    python benchmarks/per_iteration.py --sizes 64x256x256 --rounds 5

Issue 16's per-iteration measure: on the periodic grid (`-pad 0 0`, deconwolf's `--periodic`),
with the CPU's FFT path (ducc0 on all allowed threads, as `epr` picks it for these sizes),
the seconds per iteration of eprjax's iteration against deconwolf's accelerated
Richardson-Lucy (`--method shb`, 2 threads) on the same data, and against the FFTs alone
(ducc0 in NumPy: one real-FFT pair, and two: what an iteration in real space needs).

eprjax's iteration is timed as the command line runs it (`_solve_advance`, 5 iterations from
a state 5 iterations in), with the allocator the command sets (one arena, freed memory kept),
in each of its forms: on spectra (the default for periodic unweighted data: one FFT pair per
iteration) and in real space (`_restore.SPECTRAL = False`, two pairs, three preconditioned),
each with and without the preconditioner. deconwolf's iteration is (time of --iter 25 - time
of --iter 5) / 20, so that reading, writing and planning cancel (FFTW's plans are cached by
a run before timing). Every item is timed once per round, the rounds interleaved; figures
are medians over the rounds.

The data: points on a background of 10, blurred by a Gaussian PSF (sigma 4, 1.5, 1.5 voxels,
31^3) with noise (`bench_restore.test_image`): dense, the preconditioner stays on.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import eprjax_launch

eprjax_launch.one_arena()  # as the commands start (before JAX's threads allocate)

import ducc0  # noqa: E402
import jax  # noqa: E402
import numpy as np  # noqa: E402
import tifffile  # noqa: E402

from bench_restore import epr_iterations, gaussian_psf, test_image  # noqa: E402
from eprjax import _fft, _restore  # noqa: E402
from eprjax._operator import make_grid  # noqa: E402
from eprjax._stream import keep_freed_memory  # noqa: E402

STEPS = 5


def eprjax_item(g, psf, spectral: bool, precondition: str, rounds: int):
    """A callable that runs STEPS iterations (one per round, and one warm-up)."""
    _restore.SPECTRAL = spectral
    os.environ["EPRJAX_PRECONDITION"] = precondition
    _fft.forget_traces()
    run = epr_iterations(g, psf, make_grid(g.shape, (0, 0, 0)), STEPS, rounds + 1)
    jax.block_until_ready(run())  # compiled here, before the mode changes
    return lambda: jax.block_until_ready(run())


def ducc_pairs(shape, count: int):
    threads = _fft.fft_threads()
    x = np.random.default_rng(1).random(shape, np.float32)

    def run():
        for _ in range(count):
            spectrum = ducc0.fft.r2c(x, axes=(0, 1, 2), inorm=1, nthreads=threads)
            ducc0.fft.c2r(spectrum, axes=(0, 1, 2), lastsize=shape[-1], inorm=1, nthreads=threads, allow_overwriting_input=True)

    return run


def deconwolf_item(dw: str, folder: Path, iterations: int):
    def run():
        subprocess.run(
            [dw, "--iter", str(iterations), "--threads", "2", "--method", "shb", "--periodic", "--float", "--overwrite",
             "--out", str(folder / f"out{iterations}.tif"), str(folder / "image.tif"), str(folder / "psf.tif")],
            check=True, capture_output=True, cwd=folder,
        )

    return run


def measure(size: tuple[int, int, int], dw: str | None, rounds: int) -> list[tuple[str, float, float, float]]:
    psf = gaussian_psf()
    g = test_image(size, psf)
    items: dict[str, tuple] = {}  # name: (callable, divisor, subtract-name)
    for spectral in (True, False):
        for pre in ("auto", "none"):
            name = f"eprjax, {'spectra' if spectral else 'real space'}, preconditioner {pre}"
            items[name] = (eprjax_item(g, psf, spectral, pre, rounds), STEPS)
    _restore.SPECTRAL = True
    os.environ.pop("EPRJAX_PRECONDITION", None)
    items["ducc0, one real-FFT pair (NumPy)"] = (ducc_pairs(size, 1), 1)
    items["ducc0, two real-FFT pairs (NumPy)"] = (ducc_pairs(size, 2), 1)
    scratch = tempfile.TemporaryDirectory()
    if dw:
        folder = Path(scratch.name)
        tifffile.imwrite(folder / "image.tif", g)
        tifffile.imwrite(folder / "psf.tif", psf.astype(np.float32))
        for n in (5, 25):
            deconwolf_item(dw, folder, n)()  # FFTW's planning, cached for the timed runs
            items[f"deconwolf --iter {n}"] = (deconwolf_item(dw, folder, n), 1)
    times: dict[str, list[float]] = {name: [] for name in items}
    for _ in range(rounds):
        for name, (run, _) in items.items():
            start = time.perf_counter()
            run()
            times[name].append(time.perf_counter() - start)
    rows = []
    for name, (_, divisor) in items.items():
        if name.startswith("deconwolf"):
            continue
        t = [x / divisor for x in times[name]]
        rows.append((name, statistics.median(t), min(t), max(t)))
    if dw:
        per = [(b - a) / 20 for a, b in zip(times["deconwolf --iter 5"], times["deconwolf --iter 25"], strict=True)]
        rows.append(("deconwolf shb, periodic, 2 threads: (--iter 25 - --iter 5) / 20", statistics.median(per), min(per), max(per)))
    scratch.cleanup()
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", nargs="+", default=["64x256x256", "128x512x512"])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--deconwolf", help="the dw executable (left out when not given)")
    args = parser.parse_args(argv)
    keep_freed_memory()
    print(f"Device: {jax.devices()[0].platform}, {os.cpu_count()} CPU cores ({_fft.fft_threads()} allowed), JAX "
          f"{jax.__version__}, ducc0 {ducc0.__version__}; load {os.getloadavg()[0]:.2f}; median of {args.rounds} "
          "interleaved rounds (min-max); float32, periodic grid\n")
    for size_text in args.sizes:
        size = tuple(int(n) for n in size_text.lower().split("x"))
        rows = measure(size, args.deconwolf, args.rounds)
        ref = next((s for name, s, _, _ in rows if name.startswith("deconwolf")), None)
        print(f"| {size_text} | s per iteration | spread | x deconwolf's |\n|---|---|---|---|")
        for name, s, lo, hi in rows:
            ratio = f"{s / ref:.2f}" if ref else "-"
            print(f"| {name} | {s:.4f} | {lo:.4f}-{hi:.4f} | {ratio} |", flush=True)
        print()
    print(f"load at the end {os.getloadavg()[0]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
