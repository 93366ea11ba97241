"""Time to ``-co`` against an earlier eprjax (another environment), same inputs, one interleaved run.

    python benchmarks/against_commit.py --old-python /tmp/oldvenv/bin/python \\
        [--sizes 64x256x256 128x512x512] [--objects dense,beads] [--grids padded,periodic]
        [--alpha 1e-3] [--tol 1e-3] [--rounds 1]

Issue 16's first criterion is the time to ``-co`` 1e-3 against the restoration as it was when the
issue was filed (commit 718b007: no preconditioner, XLA's FFT, the iteration in real space). Install
that commit into its own environment (``git worktree add /tmp/old 718b007`` and ``pip install -e
/tmp/old`` into a fresh venv) and name its Python here. For each size, object (`preconditioner.py`'s
sparse beads and dense texture, Gaussian PSF sigma (4, 1.5, 1.5), 1 % noise), grid (padded: the
default; periodic: ``pad=0``) and round, each eprjax restores the same image in a process of its
own, the two alternating: `eprjax.restore(..., alpha, tol)` once with one iteration (compiling)
and then timed, as a warm process would. This eprjax sets the allocator as its commands do (one
arena, freed memory kept); the earlier one runs as it was. Printed: iterations, seconds, the
ratio, and the two results' relative RMS difference (which the tolerance bounds, roughly, by a
few times ``tol``).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

from preconditioner import gaussian_psf, image

WORKER = r"""
import json, sys, time
try:
    import eprjax_launch
    eprjax_launch.one_arena()
    from eprjax._stream import keep_freed_memory
    keep_freed_memory()
except (ImportError, AttributeError):  # an eprjax from before the allocator settings
    pass
import jax, numpy as np, eprjax
g, psf, out = np.load(sys.argv[1]), np.load(sys.argv[2]), sys.argv[3]
alpha, tol, pad = float(sys.argv[4]), float(sys.argv[5]), None if sys.argv[6] == "default" else int(sys.argv[6])
def run(n):
    return eprjax.restore(g, psf, alpha=alpha, tol=tol, max_iterations=n, pad=pad, throw=False)
began = time.perf_counter()
jax.block_until_ready(run(1).value)
compiled = time.perf_counter() - began
began = time.perf_counter()
sol = run(5000)
value = np.asarray(sol.value)
seconds = time.perf_counter() - began
np.save(out, value)
print(json.dumps({"iterations": int(sol.iterations), "seconds": seconds, "first": compiled}))
"""


def restore_in(python: str, folder: Path, tag: str, alpha: float, tol: float, pad: str) -> dict:
    out = folder / f"{tag}.npy"
    done = subprocess.run(
        [python, "-c", WORKER, str(folder / "g.npy"), str(folder / "psf.npy"), str(out), str(alpha), str(tol), pad],
        capture_output=True, text=True, check=False,
    )
    if done.returncode:
        raise SystemExit(f"{python} failed:\n{done.stderr[-2000:]}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    result["value"] = np.load(out)
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--old-python", required=True, help="the Python of the environment with the earlier eprjax")
    parser.add_argument("--new-python", default=sys.executable, help="this eprjax's Python (default: this one)")
    parser.add_argument("--sizes", nargs="+", default=["64x256x256", "128x512x512"])
    parser.add_argument("--objects", default="dense,beads")
    parser.add_argument("--grids", default="padded,periodic")
    parser.add_argument("--alpha", type=float, default=1e-3)
    parser.add_argument("--tol", type=float, default=1e-3)
    parser.add_argument("--rounds", type=int, default=1)
    args = parser.parse_args(argv)
    psf = gaussian_psf((31, 31, 31), (4, 1.5, 1.5))
    print(f"{os.cpu_count()} CPU cores, load {os.getloadavg()[0]:.2f}; alpha {args.alpha}, -co {args.tol}; "
          f"median of {args.rounds} round(s), the two eprjax alternating\n")
    print("| size | object | grid | earlier: iterations, s | now: iterations, s | x faster | relative difference |")
    print("|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(scratch)
        np.save(folder / "psf.npy", psf)
        for size in args.sizes:
            shape = tuple(int(n) for n in size.lower().split("x"))
            for kind in args.objects.split(","):
                np.save(folder / "g.npy", image(shape, kind, psf))
                for grid in args.grids.split(","):
                    pad = "default" if grid == "padded" else "0"
                    runs: dict[str, list[dict]] = {"old": [], "new": []}
                    for _ in range(args.rounds):
                        for tag, python in (("old", args.old_python), ("new", args.new_python)):
                            runs[tag].append(restore_in(python, folder, tag, args.alpha, args.tol, pad))
                    old, new = (statistics.median(r["seconds"] for r in runs[t]) for t in ("old", "new"))
                    a, b = runs["old"][-1]["value"], runs["new"][-1]["value"]
                    diff = float(np.sqrt(np.mean((a - b) ** 2) / np.mean(a * a)))
                    print(f"| {size} | {kind} | {grid} | {runs['old'][-1]['iterations']}, {old:.1f} | "
                          f"{runs['new'][-1]['iterations']}, {new:.1f} | {old / new:.2f} | {diff:.1e} |", flush=True)
    print(f"\nload at the end {os.getloadavg()[0]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
