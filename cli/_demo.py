"""``eprjax demo``: the seed's workflow on a simulated acquisition, nothing to download."""

from __future__ import annotations

import contextlib
import os
import time
from pathlib import Path
from typing import Annotated

import numpy as np
import typer

import eprjax
from eprjax._simulate import SEED_OPTICS, simulate

from . import _frame
from ._epr import epr
from ._frame import command
from ._prep import prepdata, preppsf

SIZES = {"small": (24, 64, 64), "medium": (48, 128, 128), "large": (64, 256, 256)}
STEPS = [
    (preppsf, "preppsf -NA 1.4 -n 1.515 -size 0.187 -spaced 0.25 -norm infocus -mask 1 psf.i2i psf_prep.i2i"),
    (prepdata, "prepdata -bg_ref 5 5 3 -norm first image.i2i image_prep.i2i"),
    (epr, "epr -V -psf psf_prep.i2i -smoothness 0.0005 -iterations 250 image_prep.i2i image_prep_restored.i2i"),
]


def nrmse(f: np.ndarray, truth: np.ndarray) -> float:
    """||a f - truth|| / ||truth||, a the best scalar."""
    f, truth = np.asarray(f, np.float64).ravel(), np.asarray(truth, np.float64).ravel()
    a = f @ truth / max(f @ f, 1e-300)
    return float(np.linalg.norm(a * f - truth) / np.linalg.norm(truth))


def figure(path: Path, data: np.ndarray, restored: np.ndarray, truth: np.ndarray, relative_gradient: np.ndarray, voxel) -> Path:
    """Orthogonal slices (XY at the middle plane, XZ at the middle row) of the data, the
    restoration and the truth, and the convergence curve, as a PNG (written whole or not
    at all)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from eprjax._io import atomic_output

    z, y = data.shape[0] // 2, data.shape[1] // 2
    aspect = voxel[0] / voxel[1]  # XZ slices drawn to scale
    fig = plt.figure(figsize=(11, 4.6), dpi=110)
    grid = fig.add_gridspec(2, 4, height_ratios=(data.shape[1], data.shape[0] * aspect), width_ratios=(1, 1, 1, 1.25))
    for column, (title, volume) in enumerate((("data (prepared)", data), ("restored (epr)", restored), ("truth", truth))):
        top = np.percentile(volume, 99.8)
        for row, (plane, label) in enumerate(((volume[z], "XY"), (volume[:, y, :], "XZ"))):
            ax = fig.add_subplot(grid[row, column])
            ax.imshow(plane, cmap="magma", vmin=0, vmax=top, aspect=aspect if row else 1, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if row == 0:
                ax.set_title(title, fontsize=10)
            if column == 0:
                ax.set_ylabel(label, fontsize=9)
    ax = fig.add_subplot(grid[:, 3])
    steps = np.arange(len(relative_gradient))
    ax.semilogy(steps[1:], relative_gradient[1:], color="0.25")
    ax.axhline(1e-3, color="crimson", lw=0.8, ls="--", label="-co 0.001")
    ax.set_xlabel("iteration")
    ax.set_ylabel("relative gradient")
    ax.set_title("convergence", fontsize=10)
    ax.legend(frameon=False, fontsize=8)
    fig.tight_layout()
    with atomic_output(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
    return path


@contextlib.contextmanager
def _inside(folder: Path):
    before = Path.cwd()
    os.chdir(folder)
    try:
        yield
    finally:
        os.chdir(before)


@command
def demo(
    outdir: Annotated[Path, typer.Option("-outdir", "--outdir", help="Folder for the simulated data and the results.")] = Path("eprjax-demo"),
    size: Annotated[str, typer.Option("-size", "--size", help="small (24x64x64), medium (48x128x128) or large (64x256x256).")] = "small",
) -> None:
    """Run the original workflow (preppsf, prepdata, epr, with the seed's flags) on a
    simulated widefield acquisition, and say how close the restoration comes to the truth."""
    if size not in SIZES:
        raise typer.BadParameter(f"must be one of {', '.join(SIZES)}, got {size!r}", param_hint="-size")
    started = time.perf_counter()
    shape = SIZES[size]
    outdir.mkdir(parents=True, exist_ok=True)
    optics = SEED_OPTICS
    typer.echo(
        f"simulating a widefield acquisition: {'x'.join(map(str, shape))} voxels of {optics['pixel_size_um']} um "
        f"(z {optics['z_step_um']} um), NA {optics['na']}, oil; beads, a filament and a shell; in {outdir}/"
    )
    data = simulate(shape)
    voxel = (optics["z_step_um"], optics["pixel_size_um"], optics["pixel_size_um"])
    eprjax.write(outdir / "psf.i2i", data.bead, voxel_size_um=voxel, history=["demo: a simulated bead"])
    eprjax.write(outdir / "image.i2i", data.image, voxel_size_um=voxel, history=["demo: a simulated specimen"])
    eprjax.write(outdir / "truth.i2i", data.truth.astype(np.float32), voxel_size_um=voxel, history=["demo: the specimen itself"])
    outer = (_frame.RUN.prog, _frame.RUN.argv, _frame.RUN.verbose, _frame.RUN.debug)
    with _inside(outdir):
        for fn, line in STEPS:
            name, *argv = line.split()
            typer.echo(f"$ {line}")
            code = _frame.run(_frame.single_app(fn, name), name, argv)
            if code != 0:
                raise eprjax.EprjaxError(f"demo: {name} failed (status {code})")
    _frame.RUN.prog, _frame.RUN.argv, _frame.RUN.verbose, _frame.RUN.debug = outer
    restored = eprjax.read(outdir / "image_prep_restored.i2i")
    before = nrmse(data.image.astype(np.float64) - data.background, data.truth)
    after = nrmse(restored, data.truth)
    # the convergence curve: the same restoration again, with its per-iteration record
    prepared = np.asarray(eprjax.read(outdir / "image_prep.i2i").data, np.float32)
    psf = np.asarray(eprjax.read(outdir / "psf_prep.i2i").data, np.float32)
    record = eprjax.restore(prepared, psf, alpha=5e-4, max_iterations=250, history=True).history
    rel = np.asarray(record.relative_gradient)
    shown = figure(outdir / "demo.png", prepared, np.asarray(restored.data), data.truth, rel[np.isfinite(rel)], voxel)
    typer.echo(
        f"NRMSE to the specimen (lower is better): data {before:.3f}, restored {after:.3f}; "
        f"{time.perf_counter() - started:.1f} s in all. Results in {outdir}/ (figure: {shown.name})"
    )
