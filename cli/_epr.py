"""``epr``, ``epr_i2i`` and ``gpu_epr``: the restoration, with the original programs' flags."""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import logging
import math
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Annotated

import jax
import numpy as np
import typer

import eprjax
from eprjax._fine import fine_voxel_size
from eprjax._fft import describe as describe_fft
from eprjax._operator import describe as describe_grid
from eprjax._io import input_path
from eprjax._restore import MESSAGES, NONFINITE, describe_preconditioner, local_devices
from eprjax._segments import MEMORY_MARGIN, device_memory, representative, segment_totals
from eprjax._stream import (
    Source, Store, assemble, check_store_path, create_result, describe_share, fingerprint, prepare_store, recompose_share,
    keep_freed_memory, recomposed, remove_store, restore_into_store,
    summary,
)

from ._cluster import barrier, from_first, join_cluster
from ._frame import RUN, Progress, check_output, command, file_pairs, for_each_file, history_line, log_to_file
from ._inputs import check_iterations, read_inputs, rnl_from_history
from ._tune import NOISE_HELP, NOISE_MODES, Weighing, choose_alpha, noise_weighing, tuning_sample

log = logging.getLogger("eprjax")

AUTO = -1.0  # -sm auto, as a number
REPORT_INTERVAL = 1.0  # seconds of iterations between progress reports (-V): each report costs the objective's passes over
# the grids, 5 % of a 0.3 s iteration on the shared light-sheet stack when reported after every one (docs/performance.md)
NOISE_BYTES_PER_VOXEL = 56  # what measuring the noise (estimate_noise, then the weights) holds per voxel: measured 55.5 (32x512x512)
SUPER_FACTOR, SUPER_ITERATIONS, SUPER_CONVERGENCE = 2, 300, 0.001  # super_epr's fixed settings (the originals')


def enable_compilation_cache() -> Path:
    """Keep compiled restorations on disk, so that the next run on the same shape starts at
    once: in $EPRJAX_CACHE_DIR, or the user's cache folder."""
    folder = os.environ.get("EPRJAX_CACHE_DIR")
    if folder is None:
        base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
        folder = os.path.join(base, "eprjax", "jax")
    path = Path(folder)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        log.warning("no compilation cache (%s: %s)", path, e.strerror)
        return path
    jax.config.update("jax_compilation_cache_dir", str(path))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    return path


def select_device(name: str | None, *, gpu: bool) -> jax.Device:
    """The device to run on: ``cpu``, ``gpu``, ``gpu:N`` (also ``cuda:N``) or an index into
    this process's devices; ``gpu`` insists on a GPU."""
    try:
        gpus = jax.local_devices(backend="gpu")
    except RuntimeError:
        gpus = []
    if gpu and not gpus:
        raise eprjax.EprjaxError(
            "no GPU: JAX sees only " + ", ".join(sorted({d.platform for d in jax.local_devices()}))
            + " (install JAX with CUDA, e.g. pip install 'jax[cuda12]', or run epr on the CPU)"
        )
    if name is None:
        return gpus[0] if gpu else jax.local_devices()[0]
    kind, _, number = name.lower().partition(":")
    if kind.isdigit() and not number:
        devices, index = jax.local_devices(), int(kind)
    elif kind in ("gpu", "cuda"):
        devices, index = gpus, int(number or 0) if (number or "0").isdigit() else -1
    elif kind == "cpu":
        devices, index = jax.local_devices(backend="cpu"), int(number or 0) if (number or "0").isdigit() else -1
    else:
        raise eprjax.ParameterError(f"-device: unknown device {name!r}; use cpu, gpu, gpu:N or a device number")
    if gpu and devices and devices[0].platform != "gpu":
        raise eprjax.ParameterError(f"-device {name}: gpu_epr runs on a GPU; use epr for the CPU")
    if not 0 <= index < len(devices):
        have = ", ".join(str(d) for d in jax.local_devices()) or "none"
        raise eprjax.ParameterError(f"-device: no device {name!r} (JAX sees: {have})")
    return devices[index]


def parse_smoothness(text: str) -> float | None:
    """``-sm``: a number >= 0, None for ``rnl`` (RNL^2 from the input's history), `AUTO`
    for ``auto`` (tuned from the data)."""
    if text.lower() == "rnl":
        return None
    if text.lower() == "auto":
        return AUTO
    try:
        value = float(text)
    except ValueError:
        raise typer.BadParameter(f"expected a number >= 0, rnl or auto, got {text!r}", param_hint="-smoothness/-sm") from None
    if not math.isfinite(value):
        raise typer.BadParameter(f"alpha must be a finite number >= 0, got {text}", param_hint="-smoothness/-sm")
    if value < 0:
        raise typer.BadParameter(f"alpha must be >= 0, got {text}", param_hint="-smoothness/-sm")
    return value


def alpha_from_history(image: eprjax.Image, name: str) -> float:
    """RNL^2, from the last RNL that prepdata wrote into ``image``'s history."""
    rnl = rnl_from_history(image)
    if rnl is None:
        raise eprjax.ParameterError(f"{name}: -sm rnl, but the file's history holds no RNL (run prepdata with -gain and -read)")
    value = rnl**2
    log.info("alpha = RNL^2 = %.4g, from %s's history", value, name)
    return value


@dataclasses.dataclass
class _Tune:
    """-sm auto's settings (-budget), and the data term (-noise)."""

    budget: float | None = None
    noise: str = "auto"


TUNE = _Tune()


@dataclasses.dataclass(frozen=True)
class Big:
    """How a large restoration is spread: segments, devices, memory, processes, resuming."""

    segment: tuple[int, int] | None = None  # (x, y), as -segment
    overlap: tuple[int, int] | None = None  # (x, y)
    devices: int | None = None
    memory: float | None = None  # MiB
    resume: bool = False
    coordinator: str | None = None
    num_processes: int | None = None
    process_id: int | None = None

    def check(self) -> None:
        if self.segment is not None and min(self.segment) < 1:
            raise typer.BadParameter(f"voxels must be >= 1, got {self.segment[0]} {self.segment[1]}", param_hint="-segment")
        if self.overlap is not None and min(self.overlap) < 0:
            raise typer.BadParameter(f"voxels must be >= 0, got {self.overlap[0]} {self.overlap[1]}", param_hint="-overlap")
        if self.devices is not None and self.devices < 1:
            raise typer.BadParameter(f"must be >= 1, got {self.devices}", param_hint="-devices")
        if self.memory is not None and not (math.isfinite(self.memory) and self.memory > 0):
            raise typer.BadParameter(f"must be > 0 MiB, got {self.memory:g}", param_hint="-memory")


def _run(
    input: str,
    output: str,
    psf: str,
    smoothness: str,
    iterations: int,
    convergence: float,
    pad: tuple[int, int] | None,
    device: str | None,
    big: Big = Big(),
    factor: tuple[int, int, int] = (1, 1, 1),
    voxel: tuple[float | None, float | None] = (None, None),
    *,
    gpu: bool,
) -> None:
    given = parse_smoothness(smoothness)
    for flag, k in (("-superz", factor[0]), ("-super", factor[1])):
        if k < 1:
            raise typer.BadParameter(f"must be an integer >= 1, got {k}", param_hint=flag)
    big.check()
    check_iterations(iterations)
    if not 0 < convergence < 1:
        raise typer.BadParameter(f"must be between 0 and 1, got {convergence}", param_hint="-convergence/-co")
    if pad is not None and min(pad) < 0:
        raise typer.BadParameter(f"voxels must be >= 0, got {pad[0]} {pad[1]}", param_hint="-pad")
    target = check_output(output, input, psf)
    share = join_cluster(big.coordinator, big.num_processes, big.process_id)
    if RUN.debug:
        log_to_file(str(target) + (f".{share[0] + 1}" if share[1] > 1 else "") + ".log")
        log.debug("the log also goes to %s.log", target)
    chosen = select_device(device, gpu=gpu)
    if big.devices is not None and big.devices > len(local_devices(None)):
        raise typer.BadParameter(f"this process sees {len(local_devices(None))} device(s), got {big.devices}", param_hint="-devices")
    cache = enable_compilation_cache()
    image, psf_image, source, h = read_inputs(input, psf, size=voxel[0], spaced=voxel[1], factor=factor)
    alpha = given if given is not None else alpha_from_history(image, input)
    log.info("device %s; compilation cache %s", chosen, cache)
    pad_zyx = None if pad is None else (pad[1], pad[0], pad[0])
    budget = _budget(big, chosen)
    if source.io_bytes > budget // 4:
        log.warning(
            "%s: reading its chunks takes %.0f MiB of the %.0f MiB memory budget (four chunks: compressed, decompressed, and the decompressor threads' copies); "
            "an input in smaller chunks leaves more to the restoration", input, source.io_bytes / 2**20, budget / 2**20,
        )
    plan = eprjax.plan_segments(
        source.shape[-3:], h, segment=None if big.segment is None else (big.segment[1], big.segment[0]),
        overlap=None if big.overlap is None else (big.overlap[1], big.overlap[0]), pad=pad_zyx,
        memory_bytes=max(budget - source.io_bytes, budget // 4), factor=factor,
    )
    segmented = plan.count > 1
    if segmented:
        log.info("segments: %s", plan.describe())
    else:
        log.info("the whole volume fits in memory (predicted peak %.0f MiB): no segments", plan.peak_bytes / 2**20)
    if segmented or share[1] > 1 or source.count > 1:
        # through the store on disk: a time series need not fit in memory either
        _run_segments(
            image, source, h, target, input, psf, smoothness, alpha, iterations, convergence, plan, chosen, big, share, factor,
        )
        return
    if big.resume:
        log.info("-resume: nothing to resume; the volume is restored whole")
    keep_freed_memory()  # restored whole: no page faults for every array of every iteration
    chosen_by = ""
    volume = source.volume(0)
    weighing = noise_weighing(volume, input, TUNE.noise)
    if alpha == AUTO:
        sample, sample_pad = tuning_sample(volume, h, pad_zyx, factor)
        alpha, chosen_by = _tuned(sample, h, image, input, sample_pad, factor, convergence, iterations, chosen, weighing)
    progress = Progress(iterations, convergence, "")
    with jax.default_device(chosen):
        solution = eprjax.restore(
            volume, h, alpha=alpha, tol=convergence, max_iterations=iterations,
            pad=pad_zyx, factor=factor, callback=progress, callback_interval=None if RUN.debug else REPORT_INTERVAL,
            weights=None if weighing is None else weighing(volume),
        )
    log.info(
        "%s; FFTs: %s; preconditioner: %s", describe_grid(solution.grid), describe_fft(solution.grid.object_shape, chosen.platform),
        describe_preconditioner(solution.grid, weighing is not None),
    )
    log.info("%s", progress.finish(solution))
    if not bool(solution.converged):
        log.info("%s", solution.message)
    _write(
        image, np.asarray(solution.value), target, factor,
        f"epr: alpha {alpha:g}{chosen_by}{_weighed(weighing)}, {int(solution.iterations)} iterations, {describe_grid(solution.grid)}",
    )


def _weighed(weighing: Weighing | None) -> str:
    """For the history: how the data term was weighted."""
    return "" if weighing is None else f", weighted by 1 / the noise variance ({weighing.source})"


def _tuned(sample, h, image, input, pad, factor, convergence, iterations, chosen, weighing=None) -> tuple[float, str]:
    """-sm auto: alpha (to 4 digits) tuned on ``sample`` (a volume, or segments together),
    and how it was chosen, for the history."""
    with jax.default_device(chosen):
        tuning, chosen_by, _ = choose_alpha(
            sample, h, image, input, pad=pad, factor=factor, tol=convergence, iterations=iterations, budget=TUNE.budget,
            weighing=weighing,
        )
    return float(f"{tuning.alpha:.4g}"), f" {chosen_by} in {tuning.evaluations} trial restorations"


def _write(image: eprjax.Image, result: np.ndarray, target: Path, factor: tuple[int, int, int], line: str) -> None:
    out = image.replace(
        data=result, voxel_size_um=fine_voxel_size(image.voxel_size_um, factor),
        origin=(image.origin[0] * factor[1], image.origin[1] * factor[2]),
    ).add_history(history_line(), line)
    written = eprjax.write(target, out)
    log.info("wrote %s", written)


def _budget(big: Big, chosen: jax.Device) -> int:
    """The memory budget, bytes: -memory, else half the device's."""
    return int(big.memory * 2**20) if big.memory is not None else int(MEMORY_MARGIN * device_memory(chosen))


def _noise_sample(source: Source, plan: eprjax.SegmentPlan, budget: int, totals: Callable[[], np.ndarray]) -> np.ndarray:
    """Where a segmented run measures the noise, within the memory ``budget``: the whole
    first volume when measuring it fits, else its representative segments (the brightest,
    and down to the median) as many as fit, or the centre of the brightest one.
    ``totals()``: the first volume's segment totals (`segment_totals`)."""
    cap = max(budget // NOISE_BYTES_PER_VOXEL, 1)
    if math.prod(source.shape[-3:]) <= cap:
        return source.volume(0)
    sy, sx = plan.segment
    nz = source.shape[1]
    picked = representative(totals(), keep=max(1, cap // (nz * sy * sx)))
    count = len(picked)
    side = min(sy, sx, max(8, math.isqrt(cap // max(nz * count, 1))))
    cy, cx = (sy - side) // 2, (sx - side) // 2
    log.debug("the noise is measured on %d segment(s), %dx%dx%d voxels each, within the memory budget", count, nz, side, side)
    return np.stack([source.region(0, plan.starts[i][0] + cy, plan.starts[i][1] + cx, side, side) for i in picked])


def _run_segments(
    image: eprjax.Image, source: Source, h: np.ndarray, target: Path, input: str, psf_name: str, smoothness: str, alpha: float,
    iterations: int, convergence: float, plan: eprjax.SegmentPlan, chosen: jax.Device, big: Big,
    share: tuple[int, int], factor: tuple[int, int, int],
) -> None:
    """Restore in segments through a store beside the output (``OUT.segments``): resumable,
    shared by the processes of a cluster, never holding the whole volume in memory."""
    first = share[0] == 0
    folder = target.with_name(target.name + ".segments")
    inputs = [input_path(input)[0], input_path(psf_name)[0]]
    if first:
        check_store_path(folder, inputs)  # before any work: a folder that is not ours, or holds an input, is refused
    manifest = {
        "input": str(Path(input).resolve()), "input_content": fingerprint(inputs[0]),
        "psf_sha1": hashlib.sha1(np.ascontiguousarray(h).tobytes()).hexdigest(), "smoothness": smoothness,
        "iterations": iterations, "convergence": convergence, "segment": list(plan.segment), "overlap": list(plan.overlap),
        "pad": list(plan.pad), "factor": list(factor), "shape": list(source.shape), "noise": TUNE.noise,
    }
    chosen_by = ""
    sy, sx = plan.segment
    # the segments' totals, read once (a pass over the first volume) if the noise or alpha needs them
    totals = functools.cache(lambda: segment_totals(lambda y, x: source.region(0, y, x, sy, sx), plan))
    weighing = None
    if TUNE.noise != "gaussian":
        region = _noise_sample(source, plan, _budget(big, chosen), totals)
        weighing = noise_weighing(region, input, TUNE.noise)
        del region
    if alpha == AUTO:
        earlier = Store(folder).manifest() if big.resume else None
        if earlier is not None and "alpha" in earlier and earlier.get("smoothness") == smoothness:
            alpha = float(earlier["alpha"])
            log.info("-sm auto: alpha %g, as chosen by the run being resumed", alpha)
        else:
            if first:
                # one alpha for every volume and segment, tuned on a few representative
                # segments of the first volume, together
                # restored together: as many as the memory budget lets restore at once
                picked = representative(totals(), keep=max(1, plan.batch))
                log.info("tuning on segments %s of %d (the brightest, and down to the median)", ", ".join(str(i + 1) for i in picked), plan.count)
                sample = np.stack([source.region(0, *plan.starts[i], sy, sx) for i in picked])
                alpha, chosen_by = _tuned(sample, h, image, input, plan.pad, factor, convergence, iterations, chosen, weighing)
            alpha = from_first(alpha if first else 0.0)
    manifest["alpha"] = alpha
    lock = None
    if first:
        fine = plan.finer()
        shape = (source.count, plan.count, fine.data_shape[0], *fine.segment)
        _, kept, lock = prepare_store(folder, manifest, shape, resume=big.resume, inputs=inputs)
        if kept:
            log.info("-resume: %d of %d segments already restored in %s", kept, plan.count * source.count, folder)
        elif not big.resume:
            log.debug("finished segments are kept in %s until the output is written", folder)
    try:
        barrier("eprjax: store ready")
        store = Store(folder)
        if not store.matches(manifest):
            raise eprjax.EprjaxError(f"{folder}: not the store this run prepared (do the processes share a file system?)")
        log.info("%s", describe_share(share, plan, source.count, local_devices(big.devices)))
        started = time.perf_counter()

        def report(done: int, total: int) -> None:
            elapsed = time.perf_counter() - started
            log.info("%d of %d segments restored, %.1f s%s", done, total, elapsed, f", about {elapsed / done * (total - done):.0f} s left" if done < total else "")

        one = None
        if plan.count == 1 and (RUN.verbose or RUN.debug):
            # whole volumes: each with its progress line (-V) or its every iteration logged (-D)
            def one(volume: np.ndarray, t: int) -> tuple[np.ndarray, int, float, int]:
                progress = Progress(iterations, convergence, f"volume {t + 1}/{source.count}: ")
                solution = eprjax.restore(
                    volume, h, alpha=alpha, tol=convergence, max_iterations=iterations, pad=plan.pad, factor=factor,
                    callback=progress, callback_interval=None if RUN.debug else REPORT_INTERVAL, throw=False,
                    weights=None if weighing is None else weighing(volume),
                )
                log.info("%s", progress.finish(solution))
                return np.asarray(solution.value), int(solution.iterations), float(solution.relative_gradient), int(solution.result)

        try:
            with jax.default_device(chosen):
                count = restore_into_store(
                    source, h, alpha=alpha, tol=convergence, max_iterations=iterations, plan=plan, store=store,
                    devices=big.devices, share=share, report=None if one else report, one=one, weigh=weighing,
                )
        except BaseException:
            if store.finished():
                log.warning("%d finished segments are kept in %s: run again with -resume to go on from there", store.finished(), folder)
            elif first:
                remove_store(folder)  # nothing in it to resume from
            raise
        log.info("%d segments restored in %.1f s", count, time.perf_counter() - started)
        if share[1] > 1:  # every process recomposes the tiles it owns, then the first writes the output
            if first:
                create_result(store, plan, source.count)
            barrier("eprjax: segments restored")
            started = time.perf_counter()
            tiles_done = recompose_share(store, plan, source.count, share)
            log.info("%d tiles of the result recomposed in %.1f s", tiles_done, time.perf_counter() - started)
            barrier("eprjax: result recomposed")
            if not first:
                log.info("process %d of %d done; process 1 writes %s", share[0] + 1, share[1], target)
                return
            result = recomposed(store, source.count)
        else:
            result = assemble(store, plan, source.count, squeeze=source.count == 1)
        k, rel, worst = summary(store, plan, source.count)
        if worst == NONFINITE:
            raise eprjax.EprjaxError(f"{MESSAGES[NONFINITE]} (in a segment; the finished ones are kept in {folder})")
        what = (f"{plan.count} segments of {plan.segment[0]}x{plan.segment[1]}" if plan.count > 1 else "whole volumes") + (
            f" on {share[1]} processes" if share[1] > 1 else ""
        )
        log.info("segments: at most %d iterations, relative gradient at most %.2e", k, rel)
        _write(image, result, target, factor, f"epr: alpha {alpha:g}{chosen_by}{_weighed(weighing)}, {k} iterations, {what}")
        del result
        remove_store(folder)
    finally:
        if lock is not None:
            lock.release()


Input = Annotated[str, typer.Argument(metavar="IN", help="Image to restore (.i2i, .tif, .ome.tif, .ome.zarr; no ending means .i2i).")]
Paths = Annotated[
    list[str],
    typer.Argument(
        metavar="IN OUT | IN... -outdir DIR",
        help="The image to restore and the restored image to write (float32; .i2i, .tif, .ome.tif, .ome.zarr; no ending "
        "means .i2i); or, with -outdir, any number of images (or patterns such as 'cells/*.tif'), each restored to DIR "
        "under its own name, with one compilation for files of one shape.",
    ),
]
Outdir = Annotated[
    str | None,
    typer.Option("-outdir", metavar="DIR", help="Restore every IN given into this folder (made if missing), each under its own name; a line for each; one that fails does not stop the others."),
]
Output = Annotated[str, typer.Argument(metavar="OUT", help="Restored image to write (float32; .i2i, .tif, .ome.tif, .ome.zarr).")]
PsfFile = Annotated[str, typer.Option("-psf", help="The prepared PSF (from preppsf): origin at the centre, same voxel size as the data.")]
Smoothness = Annotated[
    str,
    typer.Option(
        "-smoothness", "-sm",
        help="alpha, the smoothness: a noise-to-signal power ratio, >= 0. Smaller is sharper and noisier; "
        "RNL^2 from prepdata is a good first value (e.g. 0.0005). 'rnl': take RNL^2 from the input's "
        "history, where prepdata put it. 'auto': choose it from the data (as eprjax tune: the discrepancy "
        "principle with the camera's noise from prepdata -gain G -read R, else with the noise measured on the data).",
    ),
]
Iterations = Annotated[int, typer.Option("-iterations", "-it", help="The most iterations to run if not converged.")]
Convergence = Annotated[
    float,
    typer.Option(
        "-convergence", "-co",
        help="Stop when the relative gradient falls below this: 0.001 is 90-95 % converged, 0.00001 true convergence.",
    ),
]
Pad = Annotated[
    tuple[int, int] | None,
    typer.Option(
        "-pad", metavar="XY Z",
        help="Voxels added on each side in XY and in Z, where light from outside the field is modelled "
        "(default: half the PSF's support, rounded up to FFT-friendly sizes; 0 0: periodic, no padding).",
    ),
]
Device = Annotated[str | None, typer.Option("-device", help="Run on this device: cpu, gpu, gpu:N, or a device number.")]
Segment = Annotated[
    tuple[int, int] | None,
    typer.Option("-segment", metavar="NX NY", help="Restore in overlapping XY segments of this size (default: as large as the device's memory allows; the whole volume when it fits)."),
]
Overlap = Annotated[
    tuple[int, int] | None,
    typer.Option("-overlap", metavar="NX NY", help="Overlap of neighbouring segments, voxels (default: 6 PSF half-widths + 2)."),
]
Devices = Annotated[int | None, typer.Option("-devices", help="Spread segments over this many local devices (default: all).")]
Memory = Annotated[
    float | None,
    typer.Option("-memory", metavar="MIB", help="Memory the restoration may use on the device, MiB (default: half of what it has); sets the segment size."),
]
Resume = Annotated[
    bool,
    typer.Option("-resume", help="Go on with an interrupted segmented run: keep the segments it finished (in OUT.segments) and restore the rest."),
]
Coordinator = Annotated[
    str | None,
    typer.Option("-coordinator", metavar="HOST:PORT", help="Restore with several processes (hosts): where the first listens (with -num_processes and -process_id; found by itself under SLURM and Open MPI). The output's folder must be shared."),
]
NumProcesses = Annotated[int | None, typer.Option("-num_processes", metavar="N", help="With -coordinator: how many processes share the restoration.")]
ProcessId = Annotated[int | None, typer.Option("-process_id", metavar="I", help="With -coordinator: this process's number, 0 to N-1 (0 writes the output).")]
Super = Annotated[
    int,
    typer.Option(
        "-super", metavar="K",
        help="Restore onto a grid K times finer in XY (super-resolution, as super_epr with K = 2). "
        "A PSF sampled like the data is brought onto that grid by band-limited interpolation.",
    ),
]
SuperZ = Annotated[int, typer.Option("-superz", metavar="KZ", help="With -super: also KZ times finer in Z.")]
Noise = Annotated[str, typer.Option("-noise", help=NOISE_HELP)]
Budget = Annotated[
    float | None,
    typer.Option("-budget", metavar="SECONDS", help="With -sm auto: stop tuning after this many seconds, with the best alpha so far (said with a warning)."),
]
Size = Annotated[float | None, typer.Option("-size", metavar="UM", help="The data's XY pixel size, um (default: from the file); the PSF is brought to it.")]
Spaced = Annotated[float | None, typer.Option("-spaced", metavar="UM", help="The data's Z step, um (default: from the file); the PSF is brought to it.")]


def _restoration_command(name: str, doc: str, *, gpu: bool):
    def restoration(
        paths: Paths,
        psf: PsfFile,
        smoothness: Smoothness,
        iterations: Iterations = 300,
        convergence: Convergence = 0.001,
        pad: Pad = None,
        device: Device = None,
        segment: Segment = None,
        overlap: Overlap = None,
        devices: Devices = None,
        memory: Memory = None,
        resume: Resume = False,
        coordinator: Coordinator = None,
        num_processes: NumProcesses = None,
        process_id: ProcessId = None,
        super_xy: Super = 1,
        super_z: SuperZ = 1,
        size: Size = None,
        spaced: Spaced = None,
        budget: Budget = None,
        noise: Noise = "auto",
        outdir: Outdir = None,
    ) -> None:
        if budget is not None and not (math.isfinite(budget) and budget > 0):
            raise typer.BadParameter(f"must be > 0 seconds, got {budget}", param_hint="-budget")
        if noise not in NOISE_MODES:
            raise typer.BadParameter(f"must be auto, gaussian or poisson, got {noise!r}", param_hint="-noise")
        TUNE.budget, TUNE.noise = budget, noise
        big = Big(segment, overlap, devices, memory, resume, coordinator, num_processes, process_id)
        for_each_file(
            file_pairs(paths, outdir),
            lambda input, output: _run(
                input, output, psf, smoothness, iterations, convergence, pad, device, big, (super_z, super_xy, super_xy),
                (size, spaced), gpu=gpu,
            ),
            alone=lambda: jax.process_count() == 1,
        )

    restoration.__name__ = restoration.__qualname__ = name
    restoration.__doc__ = doc
    return command(restoration)


epr = _restoration_command(
    "epr",
    """Restore a 3-D image: regularised, non-negative least squares (Exhaustive Photon Restoration).

    The data may hold several volumes (T), restored one after another. Runs on the first
    device JAX offers (a GPU when there is one) unless -device says otherwise.
    """,
    gpu=False,
)
gpu_epr = _restoration_command(
    "gpu_epr", "Restore a 3-D image on a GPU (as epr, but refuses to run without one).", gpu=True
)


@command
def super_epr(input: Input, output: Output, psf: PsfFile, smoothness: Smoothness) -> None:
    """Restore a 3-D image onto a grid 2 times finer in XY (super-resolution EPR).

    As the original: only -sm can be set; -co 0.001 and -it 300 are fixed. The output has
    twice the voxels along Y and X, and half the voxel size. For other factors, iterations
    or padding, use epr -super K.
    """
    TUNE.budget, TUNE.noise = None, "gaussian"
    _run(input, output, psf, smoothness, SUPER_ITERATIONS, SUPER_CONVERGENCE, None, None, factor=(1, SUPER_FACTOR, SUPER_FACTOR), gpu=False)
