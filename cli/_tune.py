"""``eprjax tune`` and ``epr -sm auto``: the smoothness chosen from the data."""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Annotated

import numpy as np
import typer

import eprjax
from eprjax._tune import CRITERIA

from ._frame import RUN, command
from ._inputs import read_inputs, rnl_from_history

log = logging.getLogger("eprjax")

def choose_alpha(
    volume: np.ndarray,
    h: np.ndarray,
    image: eprjax.Image,
    name: str,
    *,
    criterion: str | None = None,
    gain: float | None = None,
    read: float | None = None,
    offset: float = 0.0,
    reference: np.ndarray | None = None,
    pad=None,
    factor=(1, 1, 1),
    tol: float = 1e-3,
    iterations: int = 300,
    start: float | None = None,
    method: str = "search",
) -> tuple[eprjax.Tuning, str]:
    """Tune alpha on ``volume``; the noise from the camera (gain, read noise) when given, else
    measured on the data (and compared with the camera's, or with the RNL prepdata wrote into
    the history, when those exist). Returns the tuning and a line for the history."""
    variance, source = None, None
    if gain is not None or read is not None:
        if gain is None or read is None:
            raise eprjax.ParameterError("give both -gain and -read (or neither)")
        variance = eprjax.camera_variance(volume, gain=gain, read_noise=read, offset=offset)
        source = f"camera gain {gain:g}, read noise {read:g}"
    elif (rnl := rnl_from_history(image, camera_only=True)) is not None:
        variance = eprjax.noise_variance_from_rnl(volume, rnl)
        source = f"RNL {rnl:.4g} from prepdata"
    flat = np.concatenate(list(volume), axis=0) if volume.ndim == 4 else volume
    model = None
    try:
        model = eprjax.estimate_noise(flat)
        log.info("%s: the data's own noise: %s", name, model.describe())
    except eprjax.ParameterError as e:
        log.warning("%s: the noise could not be measured on the data (%s)", name, e)
    if model is not None:
        level = float(np.median(flat))
        mine = float(model.variance(level))
        if variance is not None:
            theirs = float(np.median(np.asarray(variance)))
            log.info("%s: noise at the median level %.4g: %.4g RMS from the %s, %.4g measured", name, level, math.sqrt(theirs), source, math.sqrt(mine))
            if not 0.8 < theirs / mine < 1.25:
                log.warning(
                    "%s: the %s gives a noise variance %.3g times the one measured on the data; check the camera's "
                    "gain, read noise and offset (the measured noise is used only without them)", name, source, theirs / mine,
                )
        else:
            variance = model.voxel_variance(flat).reshape(volume.shape)
            source = "measured on the data"
    automatic = criterion is None
    if criterion is None:
        criterion = "reference" if reference is not None else ("discrepancy" if variance is not None else "gcv")
        if criterion == "gcv":
            log.warning(
                "%s: no noise model (it could not be measured, and no -gain/-read was given): choosing alpha by generalised "
                "cross-validation, which tends to pick it too small for deconvolution; check the result", name,
            )
    if criterion in ("sure", "discrepancy") and variance is None:
        raise eprjax.ParameterError(f"-criterion {criterion} needs the noise, which could not be measured on the data: give -gain G -read R")
    where = "x".join(map(str, volume.shape[-3:])) + (f" voxels, {volume.shape[0]} segments" if volume.ndim == 4 else " voxels")
    log.info("tuning alpha by %s%s on %s", criterion, f" (noise: {source})" if source and criterion != "gcv" else "", where)

    def show(alpha: float, value: float) -> None:
        log.info("  alpha %.4g: %s %.6g", alpha, criterion, value)

    def run(criterion: str) -> eprjax.Tuning:
        return eprjax.tune_alpha(
            volume, h, criterion=criterion, noise_variance=variance, reference=reference, pad=pad, factor=factor,
            tol=tol, max_iterations=iterations, start=start, method=method, callback=show if RUN.verbose else None,
        )

    try:
        tuning = run(criterion)
    except eprjax.EprjaxError as e:
        if criterion != "discrepancy" or not automatic:
            raise
        log.warning("%s; trying Stein's unbiased risk estimate (sure) instead", e)
        criterion = "sure"
        tuning = run(criterion)
    log.info("chose %s", tuning.describe())
    return tuning, f"chosen by {criterion}" + (f" ({source})" if source and criterion != "gcv" else "")


def plot(tuning: eprjax.Tuning, path: str) -> Path:
    """The criterion against alpha, the choice marked, as a PNG (written whole or not at all)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from eprjax._io import atomic_output

    order = np.argsort(tuning.alphas)
    fig, ax = plt.subplots(figsize=(5, 3.2), dpi=120)
    ax.semilogx(tuning.alphas[order], tuning.values[order], "o-", color="0.3", ms=4, label=tuning.criterion)
    chosen = int(np.argmin(np.abs(tuning.alphas - tuning.alpha)))
    ax.semilogx([tuning.alpha], [tuning.values[chosen]], "o", color="crimson", ms=8, label=f"chosen: {tuning.alpha:.3g}")
    if tuning.criterion == "discrepancy":
        ax.axhline(0, color="0.7", lw=0.8)
    ax.set_xlabel("alpha (-sm)")
    ax.set_ylabel({"gcv": "log GCV", "sure": "SURE / noise", "discrepancy": "log(residual / noise)", "reference": "log relative error"}[tuning.criterion])
    ax.legend(frameon=False)
    fig.tight_layout()
    target = Path(path if path.lower().endswith(".png") else path + ".png")
    with atomic_output(target) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
    return target


@command
def tune(
    input: Annotated[str, typer.Argument(metavar="IN", help="The image to restore (prepared by prepdata).")],
    psf: Annotated[str, typer.Option("-psf", help="The prepared PSF (from preppsf).")],
    criterion: Annotated[
        str | None,
        typer.Option(
            "-criterion",
            help="discrepancy (the residual matches the noise; needs the noise), sure (Stein's unbiased risk; needs the noise), "
            "gcv (no noise model; tends to pick alpha too small), reference (needs -reference). "
            "Default: reference with -reference, discrepancy when the noise is known, else gcv.",
        ),
    ] = None,
    reference: Annotated[str | None, typer.Option("-reference", help="A ground truth or high-SNR image of the same field, to compare with.")] = None,
    gain: Annotated[float | None, typer.Option("-gain", help="Camera gain, electrons per count (with -read: the noise of raw counts).")] = None,
    read: Annotated[float | None, typer.Option("-read", help="Camera read noise, electrons RMS.")] = None,
    offset: Annotated[float, typer.Option("-offset", help="Camera offset, counts (with -gain, -read).")] = 0.0,
    start: Annotated[float | None, typer.Option("-start", help="The first alpha tried (default 0.001).")] = None,
    iterations: Annotated[int, typer.Option("-iterations", "-it", help="Iterations per trial restoration.")] = 300,
    convergence: Annotated[float, typer.Option("-convergence", "-co", help="Convergence of each trial restoration.")] = 0.001,
    plot_file: Annotated[str | None, typer.Option("-plot", metavar="PNG", help="Write the criterion against alpha, the choice marked.")] = None,
    method: Annotated[
        str, typer.Option("-method", help="search (default: the fastest and surest, see the docs) or optax (every criterion minimised by optax on its implicit gradient).")
    ] = "search",
) -> None:
    """Choose the smoothness alpha from the data, and print it.

    Each trial restores with the given alpha; the criterion is minimised over log alpha
    (discrepancy: solved for, with Newton and secant steps on the implicit gradient).
    Use the result with epr -sm ALPHA, or run epr -sm auto to tune and restore at once.
    """
    if criterion is not None and criterion not in CRITERIA:
        raise typer.BadParameter(f"must be one of {', '.join(CRITERIA)}, got {criterion!r}", param_hint="-criterion")
    if method not in ("search", "optax"):
        raise typer.BadParameter(f"must be search or optax, got {method!r}", param_hint="-method")
    if start is not None and not (math.isfinite(start) and start > 0):
        raise typer.BadParameter(f"must be > 0, got {start}", param_hint="-start")
    if iterations < 1:
        raise typer.BadParameter(f"must be >= 1, got {iterations}", param_hint="-iterations/-it")
    if not 0 < convergence < 1:
        raise typer.BadParameter(f"must be between 0 and 1, got {convergence}", param_hint="-convergence/-co")
    image, _, source, h = read_inputs(input, psf)
    volume = source.volume(0)
    ref = None
    if reference is not None:
        ref = np.asarray(eprjax.read(reference).data, np.float32)
        ref = ref[None] if ref.ndim == 2 else ref
    if criterion == "reference" and ref is None:
        raise eprjax.ParameterError("-criterion reference needs -reference FILE")
    tuning, _ = choose_alpha(
        volume, h, image, input, criterion=criterion, gain=gain, read=read, offset=offset, reference=ref,
        tol=convergence, iterations=iterations, start=start, method=method,
    )
    if plot_file is not None:
        log.info("wrote %s", plot(tuning, plot_file))
    print(f"{tuning.alpha:.4g}")
