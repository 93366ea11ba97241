"""``eprjax tune`` and ``epr -sm auto``: the smoothness chosen from the data."""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Annotated

import numpy as np
import typer

import eprjax
from eprjax._segments import representative, segment_totals
from eprjax._tune import CRITERIA, UNITS, shown

from ._frame import RUN, Progress, command
from ._inputs import check_iterations, read_inputs, rnl_from_history

log = logging.getLogger("eprjax")

TUNE_VOXELS = 1 << 21  # a volume larger than this is tuned on representative sub-volumes holding about this many
TUNE_SHARE = 0.25  # ... and at most this share of its voxels: tuning then costs a bounded number of restorations
TUNE_PIECES = 3
NOISE_MODES = ("auto", "gaussian", "poisson")
SWEEP_DECADES = 1.5  # tune -sweep: from this many decades below the choice to as many above (and over every trial)
SWEEP_LOWEST = 1e-7  # ... but not below: trial restorations there rarely converge
WEIGHT_SPAN = 8.0  # -noise auto weights where the noise variance spans more than this (measured in benchmarks/weighted.py: a span of 4 lost 2 % NRMSE by weighting, 10 gained 1.5 %, 20 and 50 gained 5.5 and 12 %)


class Weighing:
    """-noise poisson: each volume's or segment's data-term weights, 1 / variance of one
    noise model, scaled by one number for the whole run (so that every piece shares alpha's
    meaning)."""

    def __init__(self, variance, scale: float, source: str) -> None:
        self.variance = variance  # region -> per-voxel variance
        self.scale = scale
        self.source = source

    def __call__(self, region: np.ndarray) -> np.ndarray:
        return eprjax.noise_weights(self.variance(region), scale=self.scale)


def noise_weighing(
    volume: np.ndarray, name: str, mode: str, *, gain: float | None = None, read: float | None = None, offset: float = 0.0,
) -> Weighing | None:
    """The weights for ``-noise MODE`` (None for gaussian: every voxel alike): Poisson-Gaussian,
    from the camera's numbers when given, else from the noise model measured on ``volume``;
    auto: poisson where that variance spans over `WEIGHT_SPAN` times (the brightest 1 % of
    voxels against the darkest), else gaussian."""
    if mode not in NOISE_MODES:
        raise typer.BadParameter(f"must be auto, gaussian or poisson, got {mode!r}", param_hint="-noise")
    if mode == "gaussian":
        return None
    if gain is not None and read is not None:
        def variance(region):
            return eprjax.camera_variance(region, gain=gain, read_noise=read, offset=offset)

        source = f"camera gain {gain:g}, read noise {read:g}"
    else:
        try:
            model = eprjax.estimate_noise(volume)
        except eprjax.ParameterError as e:
            if mode == "auto":
                log.info("-noise auto: the noise could not be measured on %s (%s): every voxel weighted alike", name, e)
                return None
            raise eprjax.ParameterError(f"-noise poisson: the noise could not be measured on {name} ({e}); use -noise gaussian") from None
        variance = model.voxel_variance
        source = "measured on the data"
    v = np.asarray(variance(volume), np.float64)
    span = float(np.quantile(v, 0.99) / max(float(v.min()), 1e-300))
    if mode == "auto" and span <= WEIGHT_SPAN:
        log.info(
            "-noise auto: the noise variance (%s) spans %.3g times from the darkest voxels to the brightest 1 %%, "
            "under %g: every voxel weighted alike (gaussian)", source, span, WEIGHT_SPAN,
        )
        return None
    weighing = Weighing(variance, float(np.mean(1.0 / v)), source)
    w = weighing(volume)
    log.info(
        "-noise %s: the data term weighted by 1 / variance (%s; it spans %.3g times); weights %.3g to %.3g, a mean of 1",
        mode, source, span, float(w.min()), float(w.max()),
    )
    return weighing


def tuning_sample(volume: np.ndarray, h: np.ndarray, pad, factor) -> tuple[np.ndarray, object]:
    """What -sm auto tunes on: the volume itself, or when it is large, `TUNE_PIECES`
    sub-volumes (full Z, square in XY) chosen as the segmented path chooses segments (the
    brightest and down to the median), each with the padding its own restoration would have;
    and the padding to tune with."""
    if volume.size <= TUNE_VOXELS:
        return volume, pad
    nz, ny, nx = volume.shape
    budget = min(TUNE_VOXELS, TUNE_SHARE * volume.size)
    side = int(math.sqrt(budget / (TUNE_PIECES * nz)))
    side = max(min(side, ny, nx), min(64, ny, nx))
    if side >= min(ny, nx):
        return volume, pad
    plan = eprjax.plan_segments(volume.shape, h, segment=(side, side), overlap=(0, 0), factor=factor)
    picked = representative(segment_totals(lambda y, x: volume[:, y : y + side, x : x + side], plan), TUNE_PIECES)
    log.info(
        "tuning on %d sub-volumes of %dx%dx%d voxels (of %s: the brightest, and down to the median), %.0f %% of the volume",
        len(picked), nz, side, side, "x".join(map(str, volume.shape)), 100 * len(picked) * nz * side * side / volume.size,
    )
    sample = np.stack([volume[:, y : y + side, x : x + side] for y, x in (plan.starts[i] for i in picked)])
    return sample, plan.pad


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
    budget: float | None = None,
    weighing: Weighing | None = None,
    sweep: int = 0,
) -> tuple[eprjax.Tuning, str, eprjax.Tuning | None]:
    """Tune alpha on ``volume``; the noise from the camera (gain, read noise) when given, else
    measured on the data (and compared with the camera's, or with the RNL prepdata wrote into
    the history, when those exist). Returns the tuning, a line for the history, and (``sweep``
    alphas) the same criterion swept around the choice, to look at."""
    variance, source = None, None
    if gain is not None or read is not None:
        if gain is None or read is None:
            raise eprjax.ParameterError("give both -gain and -read (or neither)")
        variance = eprjax.camera_variance(volume, gain=gain, read_noise=read, offset=offset)
        source = f"camera gain {gain:g}, read noise {read:g}"
    elif (rnl := rnl_from_history(image, camera_only=True)) is not None:
        variance = eprjax.noise_variance_from_rnl(volume, rnl)
        source = f"RNL {rnl:.4g} from prepdata"
    model = None
    try:
        model = eprjax.estimate_noise(volume)
        log.info("%s: the data's own noise: %s", name, model.describe())
    except eprjax.ParameterError as e:
        log.warning("%s: the noise could not be measured on the data (%s)", name, e)
    if model is not None:
        level = float(np.median(volume))
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
            variance = model.voxel_variance(volume)
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

    trial: dict = {"alpha": None, "n": 0, "progress": None}

    def show(alpha: float, value: float) -> None:
        log.info("  trial %d, alpha %.4g: %s %.5g", trial["n"], alpha, UNITS[criterion], shown(criterion, value))

    def progress(alpha: float, k: int, rel: float) -> None:
        if alpha != trial["alpha"]:  # a new trial: its own progress line
            trial.update(alpha=alpha, n=trial["n"] + 1, progress=Progress(iterations, tol, f"trial {trial['n'] + 1}, alpha {alpha:.4g}: "))
        trial["progress"](k, rel, math.nan, math.nan, math.nan)  # Ctrl-C and SIGTERM are heard here

    def run(criterion: str, alphas=None) -> eprjax.Tuning:
        trial.update(alpha=None, n=0, progress=None)
        return eprjax.tune_alpha(
            volume, h, criterion=criterion, noise_variance=variance, reference=reference, pad=pad, factor=factor,
            tol=tol, max_iterations=iterations, start=start, method=method, callback=show if RUN.verbose else None,
            progress=progress, max_seconds=budget, weights=None if weighing is None else weighing(volume), alphas=alphas,
        )

    try:
        tuning = run(criterion)
    except eprjax.EprjaxError as e:
        if criterion != "discrepancy" or not automatic:
            raise
        log.warning("%s; trying Stein's unbiased risk estimate (sure) instead", e)
        criterion = "sure"
        tuning = run(criterion)
    if RUN.verbose:
        for row in tuning.table():
            log.info("  %s", row)
    if tuning.stopped:
        log.warning("%s: %s", name, tuning.stopped)
    log.info("chose %s", tuning.describe())
    swept = None
    if sweep > 0:
        # from 30x below to 30x above the choice, and over every trial
        span = np.log10(tuning.alphas)
        low = min(math.log10(tuning.alpha) - SWEEP_DECADES, float(span.min()))
        high = max(math.log10(tuning.alpha) + SWEEP_DECADES, float(span.max()))
        low = max(low, math.log10(SWEEP_LOWEST))
        log.info("sweeping %s over %d alphas, %.3g to %.3g", criterion, sweep, 10**low, 10**high)
        swept = run(criterion, alphas=np.logspace(low, high, sweep))
        if RUN.verbose:
            for row in swept.table():
                log.info("  %s", row)
        if swept.stopped:
            log.warning("%s: the sweep: %s", name, swept.stopped)
    return tuning, f"chosen by {criterion}" + (f" ({source})" if source and criterion != "gcv" else ""), swept


NOISE_HELP = (
    "The data term: gaussian (every voxel weighted alike: least squares), poisson (each voxel weighted by 1 / its noise "
    "variance, from -gain/-read when given, else from the noise model measured on the data: bright voxels, noisier, count less), "
    "or auto (default): poisson where that variance spans over 8 times across the data (photon-counting data with bright "
    "structures), else gaussian."
)


def plot(tuning: eprjax.Tuning, path: str, swept: eprjax.Tuning | None = None) -> Path:
    """The criterion against alpha at the search's trials, the choice marked, and (``swept``)
    the same criterion swept over alpha beneath them, as a PNG (written whole or not at all)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from eprjax._io import atomic_output

    order = np.argsort(tuning.alphas)
    fig, ax = plt.subplots(figsize=(5, 3.2), dpi=120)
    values = np.array([shown(tuning.criterion, v) for v in tuning.values])
    if swept is not None:
        o = np.argsort(swept.alphas)
        ax.semilogx(swept.alphas[o], [shown(swept.criterion, v) for v in swept.values[o]], "-", color="steelblue", lw=1.5, label="sweep")
    ax.semilogx(tuning.alphas[order], values[order], "o", color="0.3", ms=4, label="the search's trials")
    chosen = int(np.argmin(np.abs(tuning.alphas - tuning.alpha)))
    ax.semilogx([tuning.alpha], [values[chosen]], "o", color="crimson", ms=8, label=f"chosen: {tuning.alpha:.3g}")
    if tuning.criterion == "discrepancy":
        ax.axhline(1, color="0.7", lw=0.8)
        if tuning.floor is not None:
            ax.axhline(tuning.floor, color="0.7", lw=0.8, ls="--", label=f"floor {tuning.floor:.3g}")
    ax.set_xlabel("alpha (-sm)")
    ax.set_ylabel(UNITS[tuning.criterion])
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
    budget: Annotated[
        float | None, typer.Option("-budget", metavar="SECONDS", help="Stop tuning after this many seconds with the best alpha so far (said with a warning).")
    ] = None,
    sweep: Annotated[
        int, typer.Option("-sweep", metavar="N", help="After the search, also evaluate the criterion at N alphas around the choice (one restoration each), listed with -V and drawn by -plot: to check the choice.")
    ] = 0,
    method: Annotated[
        str, typer.Option("-method", help="search (default: the fastest and surest, see the docs) or optax (every criterion minimised by optax on its implicit gradient).")
    ] = "search",
    noise: Annotated[str, typer.Option("-noise", help=NOISE_HELP)] = "auto",
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
    check_iterations(iterations)
    if budget is not None and not (math.isfinite(budget) and budget > 0):
        raise typer.BadParameter(f"must be > 0 seconds, got {budget}", param_hint="-budget")
    if not 0 < convergence < 1:
        raise typer.BadParameter(f"must be between 0 and 1, got {convergence}", param_hint="-convergence/-co")
    if noise not in NOISE_MODES:
        raise typer.BadParameter(f"must be auto, gaussian or poisson, got {noise!r}", param_hint="-noise")
    if not 0 <= sweep <= 100:
        raise typer.BadParameter(f"must be 0 to 100 alphas, got {sweep}", param_hint="-sweep")
    image, _, source, h = read_inputs(input, psf)
    volume = source.volume(0)
    # the weights from the whole volume, as epr -sm auto has them (their scale, a mean of 1 over
    # the volume, is part of what alpha means: weighed on the sample alone, the alpha printed
    # would not be the one epr -sm auto chooses, nor the one to give epr -sm)
    weighing = noise_weighing(volume, input, noise, gain=gain, read=read, offset=offset)
    pad = None
    if reference is None:
        volume, pad = tuning_sample(volume, h, None, (1, 1, 1))
    ref = None
    if reference is not None:
        ref = np.asarray(eprjax.read(reference).data, np.float32)
        ref = ref[None] if ref.ndim == 2 else ref
    if criterion == "reference" and ref is None:
        raise eprjax.ParameterError("-criterion reference needs -reference FILE")
    tuning, _, swept = choose_alpha(
        volume, h, image, input, criterion=criterion, gain=gain, read=read, offset=offset, reference=ref, pad=pad,
        tol=convergence, iterations=iterations, start=start, method=method, budget=budget, weighing=weighing, sweep=sweep,
    )
    if plot_file is not None:
        log.info("wrote %s", plot(tuning, plot_file, swept))
    print(f"{tuning.alpha:.4g}")
