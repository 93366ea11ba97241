"""Many files through one command against one command per file.

    python benchmarks/many_files.py [--files 20] [--shape 32,256,256] [--iterations 30]

Writes ``--files`` simulated stacks of one shape (TIFF) and a Gaussian PSF in a scratch
folder, then times, in one run: ``epr ... IN... -outdir DIR`` (one process, one
compilation) and one ``epr ... IN OUT`` per file (a process each, the compiled code taken
from the persistent cache after the first), with a fresh compilation cache for each way;
and, in this process, one restoration compiled and then warm, for "N restorations plus
one compile". Each command restores with a fixed iteration count (``-co`` out of reach)
so that every file costs the same.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

import eprjax


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=20)
    parser.add_argument("--shape", default="32,256,256")
    parser.add_argument("--iterations", type=int, default=30)
    args = parser.parse_args()
    shape = tuple(int(n) for n in args.shape.split(","))
    folder = Path(tempfile.mkdtemp(prefix="eprjax-many-"))
    epr = str(Path(sys.executable).parent / "epr")
    try:
        rng = np.random.default_rng(0)
        axes = [np.arange(n) - n // 2 for n in (15, 15, 15)]
        zz, yy, xx = np.meshgrid(*axes, indexing="ij")
        psf = np.exp(-0.5 * ((zz / 3) ** 2 + (yy / 1.5) ** 2 + (xx / 1.5) ** 2)).astype(np.float32)
        psf /= psf.sum()
        eprjax.write(folder / "psf.i2i", psf)
        names = []
        for k in range(args.files):
            g = rng.poisson(50 + 200 * rng.random(shape) ** 8).astype(np.float32)
            names.append(f"cell{k:02d}.tif")
            eprjax.write(folder / names[-1], g)
        flags = ["-psf", "psf", "-sm", "1e-3", "-it", str(args.iterations), "-co", "1e-9", "-noise", "gaussian"]

        def timed(argv: list[str], cache: str) -> float:
            env = {**os.environ, "EPRJAX_CACHE_DIR": str(folder / cache)}
            started = time.perf_counter()
            subprocess.run(argv, cwd=folder, env=env, check=True, capture_output=True)
            return time.perf_counter() - started

        start_up = min(timed([epr, "-h"], "cache-help") for _ in range(2))  # Python, JAX and eprjax loaded, nothing run
        one_run = timed([epr, *flags, *names, "-outdir", "batch"], "cache-batch")
        each = [timed([epr, *flags, name, f"alone_{name}"], "cache-each") for name in names]

        g = np.asarray(eprjax.read(folder / names[0]).data, np.float32)
        started = time.perf_counter()
        eprjax.restore(g, psf, alpha=1e-3, tol=1e-9, max_iterations=args.iterations)
        first = time.perf_counter() - started
        warm = []
        for _ in range(3):
            started = time.perf_counter()
            eprjax.restore(g, psf, alpha=1e-3, tol=1e-9, max_iterations=args.iterations)
            warm.append(time.perf_counter() - started)
        restoration = min(warm)
        for name in names:
            a = np.asarray(eprjax.read(folder / "batch" / name).data)
            b = np.asarray(eprjax.read(folder / f"alone_{name}").data)
            assert np.array_equal(a, b), name
        n = args.files
        print(f"{n} files of {'x'.join(map(str, shape))}, {args.iterations} iterations each, {os.cpu_count()} CPU cores, load {os.getloadavg()[0]:.1f}")
        print(f"one command, -outdir:     {one_run:7.1f} s")
        print(f"{n} commands, one each:   {sum(each):7.1f} s  (first {each[0]:.1f} s, then {np.median(each[1:]):.1f} s median)")
        print(f"one restoration, warm:    {restoration:7.2f} s; compiled in this process: {first - restoration:.1f} s")
        print(f"{n} x warm + one compile: {n * restoration + first - restoration:7.1f} s; a command's start-up (epr -h): {start_up:.1f} s")
        print("outputs identical both ways")
    finally:
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
