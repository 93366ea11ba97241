"""Peak memory of one restoration against its object grid: what the segment planner's memory
model (`eprjax._segments.segment_bytes`) predicts.

On a GPU the device's own peak counter is read; on the CPU each case runs in a fresh process
and the peak resident memory (VmHWM) over the memory held just before the restoration (JAX
loaded, data and PSF made) is taken, so compilation and XLA's buffers count, as they do in a
run. The fixed part and the bytes per object voxel are fitted over the cases (least squares).

    python benchmarks/memory_per_voxel.py [--shapes 16x64x64 32x256x256 ...] [--batch 1 2] [--weighted] [--cached]
                                          [--malloc keep system]

``--malloc``: the C library's allocator as `epr` sets it for a volume restored whole (keep:
`eprjax._stream.keep_freed_memory`, the default) or as glibc leaves it (system: segmented runs, and
a program that imports eprjax); each given is measured.
"""

from __future__ import annotations

import argparse
import itertools
import json
import subprocess
import sys
import tempfile

import numpy as np

CHILD = r"""
import json, sys
shape, batch, weighted, cache, malloc = json.loads(sys.argv[1])
import jax, numpy as np
import eprjax
from eprjax._stream import keep_freed_memory
if malloc == "keep":
    assert keep_freed_memory()
from eprjax._simulate import SEED_OPTICS
from eprjax._operator import make_grid
from eprjax._restore import solve_segments
from eprjax._segments import plan_segments

def status(key):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key):
                return int(line.split()[1]) * 1024
    return 0

if cache:
    jax.config.update("jax_compilation_cache_dir", cache)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
device = jax.devices()[0]
psf = np.asarray(eprjax.widefield_psf((24, 48, 48), **SEED_OPTICS))
# one chunk of `batch` segments as a segmented run restores it: padded as segments are
# (`plan_segments` on a volume three segments wide), through `solve_segments`
plan = plan_segments((shape[0], shape[1], 3 * shape[2]), psf, segment=tuple(shape[1:]), overlap=(0, 0), batch=batch)
grid = make_grid(tuple(shape), plan.pad)
g = np.random.default_rng(0).poisson(50.0, (batch, *shape)).astype(np.float32)
w = 1.0 / np.maximum(g, 1.0) if weighted else None
gpu = "peak_bytes_in_use" in (device.memory_stats() or {})
before = device.memory_stats()["bytes_in_use"] if gpu else status("VmRSS")
f = solve_segments(g, psf, 1e-3, 1e-3, 5, grid=grid, batch=batch, weights=w)[0]
peak = device.memory_stats()["peak_bytes_in_use"] if gpu else status("VmHWM")
print(json.dumps({"device": device.device_kind, "object": list(grid.object_shape), "added": peak - before}))
"""


def measure(shape: tuple[int, ...], batch: int, weighted: bool, cache: str | None, malloc: str) -> dict:
    """One case in a fresh process; with a ``cache`` folder, run once before to fill it (what
    a second `epr` on the same shape finds), so that compiling is not counted."""
    for _ in range(2 if cache else 1):
        out = subprocess.run([sys.executable, "-c", CHILD, json.dumps([shape, batch, weighted, cache, malloc])],
                             capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shapes", nargs="+", default=["16x64x64", "16x128x128", "32x128x128", "32x256x256", "64x256x256", "64x512x512"])
    parser.add_argument("--batch", nargs="+", type=int, default=[1])
    parser.add_argument("--weighted", action="store_true", help="also with a weighted data term")
    parser.add_argument("--cached", action="store_true", help="with the compiled code in a persistent cache (compiling not counted)")
    parser.add_argument("--malloc", nargs="+", choices=["keep", "system"], default=["keep"])
    args = parser.parse_args()
    from eprjax._segments import segment_bytes

    rows = []
    cache = tempfile.mkdtemp(prefix="eprjax-cache-") if args.cached else None
    print("| data | batch | weighted | malloc | object grid | object voxels | added MiB | bytes per object voxel | model MiB |\n"
          "|---|---|---|---|---|---|---|---|---|")
    for weighted, batch, text, malloc in itertools.product([False, True] if args.weighted else [False], args.batch, args.shapes, args.malloc):
        shape = tuple(int(n) for n in text.split("x"))
        r = measure(shape, batch, weighted, cache, malloc)
        n = batch * int(np.prod(r["object"]))
        model = segment_bytes(int(np.prod(r["object"])), batch)
        rows.append((n, r["added"]))
        print(f"| {text} | {batch} | {'yes' if weighted else 'no'} | {malloc} | {'x'.join(map(str, r['object']))} | {n} | "
              f"{r['added'] / 2**20:.0f} | {r['added'] / n:.1f} | {model / 2**20:.0f} |", flush=True)
    n, added = (np.array(v, float) for v in zip(*rows, strict=True))
    fixed, per = np.linalg.lstsq(np.stack([np.ones_like(n), n], 1), added, rcond=None)[0]
    print(f"\ndevice {r['device']}, compiled code {'cached' if cache else 'compiled in the run'}; fit: {fixed / 2**20:.0f} MiB + {per:.1f} bytes per object voxel "
          f"(largest case over the fit: {np.max(added - fixed - per * n) / 2**20:.0f} MiB)")


if __name__ == "__main__":
    main()
