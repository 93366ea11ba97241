"""What the widgets compute, apart from the widgets: plain functions of arrays and settings,
run on a worker thread, reporting progress through a callback and stopping when asked
(`Cancelled`, raised from the solver's progress callback between chunks of iterations).
Nothing here imports napari or Qt, so that all of it is tested without a display."""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import jax
import numpy as np

import eprjax
from eprjax._fine import psf_on_object_grid
from eprjax._prepdata import MEASURED, RNL_LINE
from eprjax._tune import NoAlphaFound

Voxel = tuple[float | None, float | None, float | None]
Report = Callable[[int, int, str], None]  # (done, total, what): for a progress bar
Stop = Callable[[], bool]  # asked between chunks of iterations: True stops the work

CHUNK_SECONDS = 0.25  # the solver reports (and can be stopped) about this often
PREVIEW_XY = 96  # the preview's default side, voxels: a few seconds on a laptop's CPU
PADDINGS = {"auto": None, "none (periodic)": 0}  # the Restore widget's choices -> restore's pad
CRITERIA = ("discrepancy", "sure", "gcv")  # the ones that need nothing but the data
TUNE_SECONDS = 120.0  # Auto's budget: the best alpha so far when it runs out


class Cancelled(Exception):
    """The user stopped the work (Cancel)."""


@contextlib.contextmanager
def _collected(notes: list[str]) -> Iterator[None]:
    """Whatever eprjax logs at INFO or above while inside (how the PSF was brought to the
    data's sampling, warnings), appended to ``notes``."""

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            notes.append(record.getMessage())

    log = logging.getLogger("eprjax")
    handler, level = Collect(logging.INFO), log.level
    log.addHandler(handler)
    if log.getEffectiveLevel() > logging.INFO:
        log.setLevel(logging.INFO)
    try:
        yield
    finally:
        log.removeHandler(handler)
        log.setLevel(level)


def psf_like_data(psf: Any, psf_voxel: Voxel, data: Any, data_voxel: Voxel) -> tuple[np.ndarray, list[str]]:
    """The PSF as float32 on the data's sampling, as `epr` brings it there (resampled where
    the two voxel sizes differ; refused, in one line, where that would invent detail), with
    what was done, in words."""
    h = np.asarray(psf, np.float32)
    if h.ndim != 3:
        raise eprjax.ParameterError(f"the PSF must be one 3-D stack (Z, Y, X), got shape {h.shape}")
    notes: list[str] = []
    with _collected(notes):
        h = psf_on_object_grid(
            eprjax.Image(data, voxel_size_um=data_voxel), eprjax.Image(h, voxel_size_um=psf_voxel), h, (1, 1, 1), "the PSF layer", "the image layer",
        )
    return h, notes


@dataclasses.dataclass(frozen=True)
class Prepared:
    """prepdata's result for a layer: the corrected image, what was done, and the RNL."""

    value: np.ndarray
    rnl: float
    alpha: float
    lines: tuple[str, ...]  # for the history: what was done, and the RNL line epr -sm rnl reads
    summary: str


def prepare_data(
    data: Any, *, offset: float | None = None, bg_ref: tuple[int, int, int] | None = None, norm: str = "first",
    gain: float | None = None, read_noise: float | None = None,
) -> Prepared:
    """`eprjax.prepare_data` (prepdata) on a layer's pixels, with the history it leaves."""
    prepared = eprjax.prepare_data(np.asarray(data, np.float32), offset=offset, bg_ref=bg_ref, norm=norm, gain=gain, read_noise=read_noise)
    camera = gain is not None and read_noise is not None
    done = [f"offset {offset:g}" if offset is not None else "", f"-bg_ref {' '.join(map(str, bg_ref))}" if bg_ref else "", f"-norm {norm}"]
    if camera:
        done.append(f"-gain {gain:g} -read {read_noise:g}")
    lines = ["* napari eprjax Prepare data: " + ", ".join(d for d in done if d)]
    rnl, alpha = float(prepared.rnl), float(prepared.alpha)
    summary = []
    if bg_ref is not None:
        summary.append(f"background {np.array2string(np.asarray(prepared.background), precision=4)} per voxel")
    if math.isfinite(rnl):
        lines.append(RNL_LINE.format(rnl=rnl, alpha=alpha, source="" if camera else f", {MEASURED}"))
        summary.append(f"RNL {rnl:.4g}{'' if camera else ' (noise measured on the data)'}; suggested alpha = RNL^2 = {alpha:.4g}")
    return Prepared(np.asarray(prepared.value), rnl, alpha, tuple(lines), "; ".join(summary) or "corrected")


def preview_box(shape: Sequence[int], centre: Sequence[float] | None = None, size: int = PREVIEW_XY) -> tuple[slice, slice, slice]:
    """A sub-volume to try settings on: every plane, and a ``size`` x ``size`` XY square (the
    whole width where smaller) about ``centre`` (z, y, x voxels; default the middle)."""
    if size < 8:
        raise eprjax.ParameterError(f"the preview must be at least 8 voxels wide, got {size}")
    nz, ny, nx = shape[-3:]
    cy, cx = (ny / 2, nx / 2) if centre is None else (float(centre[-2]), float(centre[-1]))
    out = [slice(0, nz)]
    for n, c in ((ny, cy), (nx, cx)):
        side = min(size, n)
        start = int(min(max(round(c - side / 2), 0), n - side))
        out.append(slice(start, start + side))
    return tuple(out)  # type: ignore[return-value]


@dataclasses.dataclass(frozen=True)
class Restored:
    """A restoration's result and how it went, for the new layer."""

    value: np.ndarray
    alpha: float
    iterations: int
    converged: bool
    relative_gradient: float
    seconds: float
    notes: tuple[str, ...]
    settings: dict[str, Any]

    def history_line(self, data_name: str, psf_name: str) -> str:
        s = self.settings
        return (
            f"* napari eprjax Restore of {data_name!r} with PSF {psf_name!r}: alpha {self.alpha:.4g}, iterations {self.iterations} "
            f"(at most {s['max_iterations']}), convergence {s['tol']:g} ({'reached' if self.converged else 'not reached'}), "
            f"padding {s['padding']}" + (f", preview region {s['region']}" if s.get("region") else "")
        )


def _devices() -> list[jax.Device]:
    """The devices a restoration may run on: the default backend's, then the CPU's if that
    is another."""
    return jax.devices() + ([] if jax.default_backend() == "cpu" else jax.devices("cpu"))


def _device(name: str | None) -> jax.Device | None:
    if name in (None, "", "default"):
        return None
    for d in _devices():
        if str(d) == name:
            return d
    raise eprjax.ParameterError(f"no device {name!r}; JAX sees {', '.join(device_names())}")


def device_names() -> list[str]:
    """The devices a restoration may run on, the default first."""
    return [str(d) for d in _devices()]


def _volume(data: Any, region: tuple[slice, ...] | None) -> np.ndarray:
    """``data`` (or its ``region``, over the last three axes) as float32."""
    return np.asarray(data if region is None else data[(Ellipsis, *region)], np.float32)


def _stopping(report: Report | None, stop: Stop | None, total: int) -> Callable[..., None]:
    def callback(k, rel, *_):
        if report is not None:
            report(int(np.max(k)), total, f"iteration {int(np.max(k))}, relative gradient {float(np.max(rel)):.3g}")
        if stop is not None and stop():
            raise Cancelled(f"stopped after {int(np.max(k))} iterations")

    return callback


def restore(
    data: Any,
    psf: np.ndarray,
    *,
    alpha: float,
    max_iterations: int = 300,
    tol: float = 1e-3,
    padding: str = "auto",
    device: str | None = None,
    report: Report | None = None,
    stop: Stop | None = None,
    notes: Sequence[str] = (),
    region: tuple[slice, ...] | None = None,
) -> Restored:
    """`eprjax.restore` of ``data`` (3-D, or 4-D: every volume) with ``psf`` (already on the
    data's sampling: `psf_like_data`), reporting each chunk of iterations and stopping
    (`Cancelled`) when ``stop()`` says so; ``region``: only that part of the data (a preview)."""
    if padding not in PADDINGS:
        raise eprjax.ParameterError(f"padding must be one of {', '.join(PADDINGS)}, got {padding!r}")
    if not (math.isfinite(alpha) and alpha >= 0):
        raise eprjax.ParameterError(f"alpha must be a finite number >= 0, got {alpha}")
    g = _volume(data, region)
    if g.ndim not in (3, 4):
        raise eprjax.ParameterError(f"the image must be 3-D (Z, Y, X) or 4-D (T, Z, Y, X), got shape {g.shape}")
    began = time.perf_counter()
    target = _device(device)
    with jax.default_device(target) if target is not None else contextlib.nullcontext():
        solution = eprjax.restore(
            g, psf, alpha=alpha, tol=tol, max_iterations=max_iterations, pad=PADDINGS[padding],
            callback=_stopping(report, stop, max_iterations), callback_interval=CHUNK_SECONDS,
        )
        value = np.asarray(solution.value)
    where = None if region is None else "z {}-{}, y {}-{}, x {}-{}".format(*(v for s in region for v in (s.start, s.stop - 1)))
    return Restored(
        value=value, alpha=float(alpha), iterations=int(np.max(np.asarray(solution.iterations))),
        converged=bool(np.all(np.asarray(solution.converged))), relative_gradient=float(np.max(np.asarray(solution.relative_gradient))),
        seconds=time.perf_counter() - began, notes=tuple(notes),
        settings={"max_iterations": int(max_iterations), "tol": float(tol), "padding": padding, "device": device or "default", "region": where},
    )


def tune(
    data: Any,
    psf: np.ndarray,
    *,
    criterion: str = "discrepancy",
    max_iterations: int = 300,
    tol: float = 1e-3,
    padding: str = "auto",
    region: tuple[slice, ...] | None = None,
    report: Report | None = None,
    stop: Stop | None = None,
    max_seconds: float = TUNE_SECONDS,
    alphas: Sequence[float] | None = None,
) -> eprjax.Tuning:
    """`eprjax.tune_alpha` on ``data`` (3-D; ``region``: that part of it), the noise
    measured on the data; each trial reported, Cancel honoured between chunks of a trial."""
    if criterion not in CRITERIA:
        raise eprjax.ParameterError(f"criterion must be one of {', '.join(CRITERIA)}, got {criterion!r}")
    g = _volume(data, region)
    if g.ndim != 3:
        raise eprjax.ParameterError(f"alpha is tuned on one 3-D volume (Z, Y, X), got shape {g.shape}")
    trials = [0]

    def progress(alpha, k, rel):
        if report is not None:
            report(trials[0], 0, f"trial {trials[0] + 1}: alpha {alpha:.3g}, iteration {k}, relative gradient {rel:.3g}")
        if stop is not None and stop():
            raise Cancelled(f"stopped during trial {trials[0] + 1}")

    def evaluated(alpha, value):
        trials[0] += 1

    return eprjax.tune_alpha(
        g, psf, criterion=criterion, pad=PADDINGS[padding], tol=tol, max_iterations=max_iterations,
        progress=progress, callback=evaluated, max_seconds=max_seconds, alphas=alphas,
    )


def auto_alpha(data: Any, psf: np.ndarray, **settings: Any) -> tuple[eprjax.Tuning, str]:
    """Auto: alpha by the discrepancy principle (`tune`); where that finds none (the noise
    measured on the region does not match what the model leaves: correlated noise, as in
    deskewed or resampled stacks), by GCV, which needs no noise model. Returns the tuning and
    what was done, in words."""
    try:
        tuning = tune(data, psf, criterion="discrepancy", **settings)
        return tuning, tuning.describe()
    except NoAlphaFound as e:
        tuning = tune(data, psf, criterion="gcv", **settings)
        return tuning, f"{tuning.describe()}; {e} (so GCV chose)"


def tuning_figure(tuning: eprjax.Tuning, figure: Any) -> None:
    """Draw the criterion against alpha on a Matplotlib ``figure``, the choice marked."""
    from eprjax._tune import UNITS, shown  # noqa: PLC0415

    figure.clear()
    ax = figure.add_subplot(1, 1, 1)
    order = np.argsort(tuning.alphas)
    values = np.array([shown(tuning.criterion, v) for v in tuning.values])
    ax.semilogx(tuning.alphas[order], values[order], "o-", color="0.4", label="trials")
    best = int(np.argmin(np.abs(tuning.alphas - tuning.alpha)))
    ax.semilogx([tuning.alpha], [values[best]], "o", color="tab:red", markersize=9, label=f"chosen: {tuning.alpha:.3g}")
    if tuning.criterion == "discrepancy":
        ax.axhline(1.0, color="tab:blue", lw=0.8, ls="--", label="the noise's level")
    ax.set_xlabel("alpha (smoothness)")
    ax.set_ylabel(UNITS[tuning.criterion])
    ax.legend(fontsize="small")
    figure.tight_layout()
