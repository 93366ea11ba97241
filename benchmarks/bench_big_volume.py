"""A large volume through the command line, as a user runs it: written to disk, restored by
`epr` whole (when it fits) and in segments under a memory budget, each in its own process.

    python benchmarks/bench_big_volume.py [--shape 64x2048x2048] [--iterations 50] [--memory 8000] [--out table.md]

The volume of bench_segments.py: the demo's specimen tiled over the field, blurred by the
seed's widefield PSF, Poisson noise (background 10). Every run does exactly --iterations iterations (-co 1e-9), alpha 1e-3. The
table gives the wall time of the whole command (reading, compiling or loading from the cache,
restoring, writing), the time per iteration per voxel from the command's own report, and the
peak resident memory of the process.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import jax
import numpy as np
from bench_segments import simulated_volume  # beside this file

import eprjax

PEAK = (
    "import resource, sys\nfrom eprjax.cli import main\ntry:\n    main(sys.argv[1:])\nexcept SystemExit as e:\n"
    "    code = e.code\nprint('PEAK', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, code, file=sys.stderr)\n"
)


def make_volume(shape: tuple[int, int, int], folder: Path) -> None:
    g, psf = simulated_volume(shape)
    eprjax.write(folder / "psf.i2i", psf)
    eprjax.write(folder / "big.i2i", g)


def run(args: list[str], folder: Path) -> dict:
    env = {**os.environ, "EPRJAX_CACHE_DIR": str(folder / "cache")}
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", PEAK, *args], capture_output=True, text=True, env=env, cwd=folder)
    wall = time.perf_counter() - started
    peak = re.search(r"PEAK (\d+) (\S+)", done.stderr)
    if done.returncode != 0 or peak is None or peak.group(2) != "0":
        raise SystemExit(f"epr failed:\n{done.stderr[-3000:]}")
    per = re.search(r"then ([0-9.]+) ms per iteration", done.stderr)
    segments = re.search(r"segments: (\d+ segments \(\d+ x \d+\) of [0-9x]+)", done.stderr)
    restored = re.search(r"(\d+) segments restored in ([0-9.]+) s", done.stderr)
    return dict(wall=wall, peak=int(peak.group(1)), per_ms=float(per.group(1)) if per else None,
                segments=segments.group(0) if segments else "whole", restore_s=float(restored.group(2)) if restored else None)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", default="64x2048x2048")
    parser.add_argument("--iterations", type=int, default=50)
    parser.add_argument("--memory", type=float, default=None, help="MiB for the segmented run (default: a quarter of the whole run's prediction)")
    parser.add_argument("--out", help="also write the Markdown table here")
    args = parser.parse_args()
    shape = tuple(int(n) for n in args.shape.split("x"))
    voxels = int(np.prod(shape))
    with tempfile.TemporaryDirectory(dir=".") as tmp:
        folder = Path(tmp)
        started = time.perf_counter()
        make_volume(shape, folder)
        print(f"volume written in {time.perf_counter() - started:.1f} s", file=sys.stderr, flush=True)
        psf = eprjax.read(folder / "psf.i2i").data
        whole_plan = eprjax.plan_segments(shape, np.asarray(psf), memory_bytes=2**50)
        memory = args.memory or whole_plan.peak_bytes / 4 / 2**20
        common = ["epr", "-V", "-psf", "psf", "-sm", "1e-3", "-it", str(args.iterations), "-co", "1e-9"]
        rows = []
        for label, extra in (("default budget", []), (f"segments, -memory {memory:.0f}", ["-memory", f"{memory:.0f}"])):
            for attempt in ("first run (compiles)", "second run (cache)"):
                r = run([*common, *extra, "big", f"out{len(rows)}"], folder)
                rows.append((label, attempt, r))
                print(label, attempt, r, file=sys.stderr, flush=True)
    device = jax.devices()[0]
    lines = [
        f"{args.shape} voxels ({voxels * 4 / 2**30:.2f} GiB float32), {args.iterations} iterations, device {device.platform} "
        f"({device.device_kind}), {os.cpu_count()} CPU cores; whole-volume restoration predicted at {whole_plan.peak_bytes / 2**30:.1f} GiB.",
        "",
        "| how | run | wall time | restoring | ns per voxel per iteration | peak memory (host) |",
        "|---|---|---|---|---|---|",
    ]
    for label, attempt, r in rows:
        restore = r["restore_s"] if r["restore_s"] is not None else (r["per_ms"] * args.iterations / 1000 if r["per_ms"] else float("nan"))
        per_voxel = 1e9 * restore / args.iterations / voxels
        what = label if r["segments"] == "whole" else f"{label}: {r['segments'].split(': ')[1]}"
        lines.append(f"| {what} | {attempt} | {r['wall']:.1f} s | {restore:.1f} s | {per_voxel:.3f} | {r['peak'] / 2**30:.2f} GiB |")
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        Path(args.out).write_text(text)


if __name__ == "__main__":
    main()
