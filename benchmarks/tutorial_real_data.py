"""The tutorial on real data (docs/tutorial.md), run by its documented commands alone, and
its figures drawn: the shared lattice light-sheet bead made into a PSF (before and after, on
a log scale), and the shared stack restored with it (projections before and after).

    python benchmarks/tutorial_real_data.py [--data ../shared/data] [--out docs/images] [--work DIR]

Needs the third-party data beside the project (../shared/data/pycudadecon); exits with a
message when it is absent. The commands are the ones the tutorial shows, run as
subprocesses; their -V reports are printed.
"""

from __future__ import annotations

import argparse
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent

COMMANDS = [
    # the bead as it was measured, the original way (negatives clipped), for the figure
    "preppsf -V -NA 1.1 -n 1.33 -size 0.1 -spaced 0.1 -nodistill {data}/psf.tif psf_clipped.tif",
    # the tutorial's steps
    "preppsf -V -NA 1.1 -n 1.33 -lambda 0.52 -size 0.1 -spaced 0.1 -modality lightsheet -sheet_NA 0.4 -excitation 0.488 -mask 1 {data}/psf.tif psf_prep.tif",
    "prepdata -V -bg_ref 10 10 5 -size 0.1 -spaced 0.3 {data}/im_deskewed.tif image_prep.tif",
    "epr -V -psf psf_prep.tif -sm 0.001 image_prep.tif image_restored.tif",
]


def run(command: str, work: Path, data: Path) -> tuple[str, float]:
    line = command.format(data=data)
    argv = shlex.split(line)
    print(f"$ {line}", flush=True)
    start = time.perf_counter()
    done = subprocess.run([str(BIN / argv[0]), *argv[1:]], cwd=work, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    print(done.stderr, end="", flush=True)
    if done.returncode != 0:
        raise SystemExit(f"failed ({done.returncode}): {line}")
    return done.stderr, seconds


def _log_panel(ax, image, vmin, title, extent):
    ax.imshow(np.log10(np.maximum(image, vmin)), cmap="magma", vmin=np.log10(vmin), vmax=0, extent=extent, aspect="equal", interpolation="nearest")
    ax.set_title(title, fontsize=9)
    ax.set_xlabel("x (um)", fontsize=8)
    ax.tick_params(labelsize=7)


def psf_figure(path: Path, raw: np.ndarray, clipped: np.ndarray, prepared: np.ndarray) -> None:
    """XZ sums through the bead (normalised to their peak), log scale: the raw bead with
    the median off, the original preparation (clipped), the distilled PSF."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    views = [
        ("raw bead, median off (|value|)", np.abs(raw - np.median(raw))),
        ("median off, negatives clipped", clipped),
        ("distilled (eprjax preppsf)", prepared),
    ]
    fig, axes = plt.subplots(2, 3, figsize=(10, 6.4), constrained_layout=True)
    vmin = 1e-5
    for column, (title, volume) in enumerate(views):
        v = np.asarray(volume, np.float64)
        nz, ny, nx = v.shape
        xz = v.sum(axis=1)
        xy = v.sum(axis=0)
        _log_panel(axes[0, column], xz / xz.max(), vmin, title + "\nXZ, summed over Y", (-nx / 20, nx / 20, -nz / 20, nz / 20))
        axes[0, column].set_ylabel("z (um)", fontsize=8)
        _log_panel(axes[1, column], xy / xy.max(), vmin, "XY, summed over Z", (-nx / 20, nx / 20, -ny / 20, ny / 20))
        axes[1, column].set_ylabel("y (um)", fontsize=8)
    fig.suptitle("The shared lattice light-sheet bead (0.1 um voxels), log10 of the light relative to its peak", fontsize=10)
    fig.savefig(path, dpi=90)
    plt.close(fig)


def restoration_figure(path: Path, data: np.ndarray, restored: np.ndarray, voxel: tuple[float, float, float]) -> None:
    """Maximum projections along Z and Y of the data and the restoration, each on its own
    range (1st to 99.9th percentile)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    dz, dy, dx = voxel
    fig, axes = plt.subplots(2, 2, figsize=(11, 6.6), constrained_layout=True, gridspec_kw={"height_ratios": [data.shape[1] * dy, data.shape[0] * dz]})
    for column, (title, v) in enumerate((("data (background off)", data), ("restored (epr -sm 0.001)", restored))):
        v = np.asarray(v, np.float64)
        lo, hi = np.percentile(v.max(axis=0), [1, 99.9])
        axes[0, column].imshow(v.max(axis=0), cmap="gray", vmin=lo, vmax=hi, extent=(0, v.shape[2] * dx, v.shape[1] * dy, 0), interpolation="nearest")
        axes[0, column].set_title(f"{title}: XY, maximum over Z", fontsize=9)
        lo, hi = np.percentile(v.max(axis=1), [1, 99.9])
        axes[1, column].imshow(v.max(axis=1), cmap="gray", vmin=lo, vmax=hi, extent=(0, v.shape[2] * dx, v.shape[0] * dz, 0), aspect="equal", interpolation="nearest")
        axes[1, column].set_title("XZ, maximum over Y", fontsize=9)
        for ax in axes[:, column]:
            ax.tick_params(labelsize=7)
            ax.set_xlabel("x (um)", fontsize=8)
    fig.savefig(path, dpi=80)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "images")
    parser.add_argument("--work", type=Path, default=None)
    args = parser.parse_args()
    data = (args.data / "pycudadecon").resolve()
    if not (data / "psf.tif").exists():
        raise SystemExit(f"{data}: the shared data are absent; nothing to do")
    import eprjax

    work = args.work or Path(tempfile.mkdtemp(prefix="eprjax-tutorial-"))
    work.mkdir(parents=True, exist_ok=True)
    times = {}
    for command in COMMANDS:
        _, seconds = run(command, work, data)
        times[command.split()[0] + (" (clipped)" if "nodistill" in command else "")] = seconds
    raw = np.asarray(eprjax.read(data / "psf.tif").data, np.float64)
    peak = np.unravel_index(int(np.argmax(raw)), raw.shape)
    clipped = np.asarray(eprjax.read(work / "psf_clipped.tif").data)
    prepared = np.asarray(eprjax.read(work / "psf_prep.tif").data)
    half = tuple(n // 2 for n in clipped.shape)
    box = tuple(slice(max(0, p - h), p + h + 1) for p, h in zip(peak, half, strict=True))
    args.out.mkdir(parents=True, exist_ok=True)
    pad = [((c - p) // 2, c - p - (c - p) // 2) for c, p in zip(clipped.shape, prepared.shape, strict=True)]
    psf_figure(args.out / "tutorial-psf.png", raw[box], clipped, np.pad(prepared, pad))
    image = eprjax.read(work / "image_prep.tif")
    restored = eprjax.read(work / "image_restored.tif")
    restoration_figure(args.out / "tutorial-restoration.png", np.asarray(image.data), np.asarray(restored.data), restored.voxel_size_um)
    print("seconds per command:", ", ".join(f"{k} {v:.1f}" for k, v in times.items()))
    print(f"wrote {args.out / 'tutorial-psf.png'} and {args.out / 'tutorial-restoration.png'}; the files are in {work}")


if __name__ == "__main__":
    main()
