"""The benchmark suite: every side-by-side measurement, one Markdown page.

    python benchmarks/suite.py [--quick] [--out docs/benchmarks.md]

Runs, each as its own process (so one's memory and compilations do not weigh on the next):
`bench_restore.py` (one EPR iteration against its two FFT pairs, scikit-image's and SciPy's
Richardson-Lucy), `bench_segments.py` (a volume whole and in segments), `bench_big_volume.py`
(a large volume through the command line, whole and segmented: time and peak memory), `tuning.py` (alpha
chosen without ground truth against the best with it), `super_resolution.py` (two close
points on a finer grid) and, where ../shared/data is present, `quality_bars.py` (NRMSE on
the flowdec bars). `--quick` uses smaller sizes and fewer repeats (a few minutes on a
2-core CPU); without it the sizes of docs/performance.md (much longer). Needs the `bench`
extra (SciPy, scikit-image).
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
SHARED = HERE.parents[1] / "shared" / "data"

SECTIONS = [
    ("Speed per iteration", "bench_restore.py", ["--sizes", "64x256x256", "128x512x512"], ["--sizes", "32x128x128", "--repeats", "3"]),
    ("A volume whole and in segments", "bench_segments.py", [], ["--shape", "24x320x320", "--segment", "240"]),
    ("A large volume through epr, whole and in segments", "bench_big_volume.py", ["--shape", "32x1024x1024", "--iterations", "20"], ["--shape", "32x512x512", "--iterations", "10", "--memory", "500"]),
    ("Choosing alpha without ground truth", "tuning.py", [], ["--seeds", "3", "--criteria", "discrepancy,sure"]),
    ("Two close points on a finer grid (super_epr)", "super_resolution.py", [], []),
    ("Restoration quality on the flowdec bars", "quality_bars.py", [], []),
]


def machine() -> str:
    import jax

    import eprjax

    return (
        f"{datetime.date.today().isoformat()}; eprjax {eprjax.__version__}, JAX {jax.__version__} on "
        f"{jax.devices()[0].device_kind} ({jax.devices()[0].platform}); {os.cpu_count()} CPU cores; "
        f"Python {platform.python_version()} on {platform.system()} {platform.machine()}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller sizes, fewer repeats")
    parser.add_argument("--out", type=Path, default=Path("docs/benchmarks.md"))
    args = parser.parse_args()
    page = [
        "# Benchmark report",
        "",
        f"Written by `python benchmarks/suite.py{' --quick' if args.quick else ''}`: {machine()}.",
        "Each table's conditions are in its script's docstring (benchmarks/); every timing is",
        "compared, in the same run, with what it cannot avoid or with the peers.",
        "",
    ]
    for title, script, full, quick in SECTIONS:
        if script == "quality_bars.py" and not SHARED.is_dir():
            print(f"skipping {script}: {SHARED} is absent", file=sys.stderr)
            continue
        with tempfile.TemporaryDirectory() as tmp:
            table = Path(tmp) / "table.md"
            command = [sys.executable, str(HERE / script), *(quick if args.quick else full), "--out", str(table)]
            print("$", " ".join(command[1:]), file=sys.stderr, flush=True)
            started = time.perf_counter()
            done = subprocess.run(command, text=True, capture_output=True)
            if done.returncode != 0:
                sys.exit(f"suite: {script} failed:\n{done.stderr[-3000:]}")
            page += [f"## {title}", "", f"`python benchmarks/{script} {' '.join(quick if args.quick else full)}` ({time.perf_counter() - started:.0f} s)", "", table.read_text().strip(), ""]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    partial = args.out.with_name(args.out.name + ".partial")
    partial.write_text("\n".join(page))
    partial.replace(args.out)
    print(f"wrote {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
