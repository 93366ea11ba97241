"""``preppsf``: a measured bead image prepared as the PSF epr needs, with the originals' flags."""

from __future__ import annotations

import logging
import math
from typing import Annotated

import numpy as np
import typer

import eprjax
from eprjax._fine import fine_voxel_size
from eprjax._prepdata import MEASURED, RNL_LINE, implied_offset

from eprjax._psf import DEFAULT_WAVELENGTH_UM, MODALITIES, NORMS

from ._convert import describe
from ._inputs import with_voxel_size
from ._frame import check_output, command, file_pairs, for_each_file, history_line

log = logging.getLogger("eprjax")
OFFSET_SHARE = 0.15  # warn when the noise leaves more than this share of the dark level unexplained


def _voxel(given: float | None, known: float | None, flag: str, what: str, name: str) -> float:
    if given is not None:
        if not given > 0:
            raise typer.BadParameter(f"must be > 0 um, got {given}", param_hint=flag)
        return given
    if known is None:
        raise eprjax.ParameterError(f"{name}: the file does not say its {what}; give it with {flag}")
    return known


def _sampling_out(size_out: float | None, spaced_out: float | None, like: str | None, voxel: tuple[float, float, float]):
    """The sampling asked for with -size_out/-spaced_out or -like (a data file's voxel
    size), or None to keep the bead's."""
    for flag, value in (("-size_out", size_out), ("-spaced_out", spaced_out)):
        if value is not None and not (math.isfinite(value) and value > 0):
            raise typer.BadParameter(f"must be > 0 um, got {value}", param_hint=flag)
    z, xy = voxel[0], voxel[1]
    if like is not None:
        data = eprjax.read(like)
        lz, ly, lx = data.voxel_size_um
        if lz is None and (ly is None and lx is None):
            raise eprjax.ParameterError(f"{like}: the file does not say its voxel size; give -size_out and -spaced_out instead")
        z = lz if lz is not None else z
        xy = lx if lx is not None else (ly if ly is not None else xy)
    z = spaced_out if spaced_out is not None else z
    xy = size_out if size_out is not None else xy
    out = (float(z), float(xy), float(xy))
    return None if all(abs(a - b) <= 1e-6 * b for a, b in zip(out, voxel, strict=True)) else out


def _report(psf: eprjax.PreparedPSF, sheet: bool) -> None:
    """The preparation report (-V); its warnings always."""
    for line in psf.report(lightsheet=sheet):
        log.info("%s", line)
    for line in psf.warnings:
        log.warning("%s", line)


@command
def preppsf(
    files: Annotated[
        list[str],
        typer.Argument(metavar="IN... OUT", help="The bead image(s) (after prepdata's basic corrections, without -norm), then the prepared PSF to write (float32, origin at the centre)."),
    ],
    na: Annotated[float, typer.Option("-NA", help="Numerical aperture of the (detection) objective.")],
    n: Annotated[float, typer.Option("-n", help="Refractive index of the immersion medium.")],
    size: Annotated[float | None, typer.Option("-size", help="XY pixel size at the object, um (default: from the file).")] = None,
    spaced: Annotated[float | None, typer.Option("-spaced", help="Z step between planes, um (default: from the file).")] = None,
    wavelength: Annotated[
        float, typer.Option("-lambda", "-wavelength", help="Emission wavelength, um.")
    ] = DEFAULT_WAVELENGTH_UM,
    norm: Annotated[
        str, typer.Option("-norm", help="infocus: the centre plane sums to 1; total: the PSF sums to 1; none.")
    ] = "infocus",
    mask: Annotated[
        float | None,
        typer.Option("-mask", metavar="R", help="Remove what lies outside the OTF's theoretical support for the modality, scaled by R (1: as theory says); refused when it would remove over 30 % of the energy."),
    ] = None,
    modality: Annotated[
        str, typer.Option("-modality", help="widefield, confocal or lightsheet: the OTF support that -mask and the report use.")
    ] = "widefield",
    excitation: Annotated[
        float | None, typer.Option("-excitation", metavar="UM", help="Excitation wavelength, um (confocal, lightsheet; default: the emission's).")
    ] = None,
    sheet_na: Annotated[
        float | None, typer.Option("-sheet_NA", metavar="NA", help="The light sheet's illumination NA (lightsheet; needed for its OTF support).")
    ] = None,
    center: Annotated[
        tuple[float, float, float] | None,
        typer.Option("-center", metavar="X Y Z", help="The PSF's origin in the input, voxels (default: the bead's centre, found to sub-voxel precision)."),
    ] = None,
    subxy: Annotated[int | None, typer.Option("-subxy", help="Width of the square XY sub-region, voxels (odd; default: where the bead's light ends, plus 2).")] = None,
    subz: Annotated[int | None, typer.Option("-subz", help="Depth of the sub-region, planes (odd; default: where the bead's light ends, plus 2).")] = None,
    background: Annotated[
        float | None, typer.Option("-background", help="Background to subtract, per voxel (default: estimated plane by plane, far from the bead).")
    ] = None,
    beads: Annotated[int, typer.Option("-beads", metavar="N", help="Find and average up to N beads in each image (the brightest, isolated ones).")] = 1,
    radial: Annotated[bool, typer.Option("-radial", help="Average the PSF over rings about the optical axis (round, aberration-free optics).")] = False,
    nodistill: Annotated[
        bool, typer.Option("-nodistill", help="Keep every voxel (negatives clipped) instead of separating the bead's light from the noise floor.")
    ] = False,
    size_out: Annotated[float | None, typer.Option("-size_out", metavar="UM", help="Write the PSF at this XY pixel size, um (the data's).")] = None,
    spaced_out: Annotated[float | None, typer.Option("-spaced_out", metavar="UM", help="Write the PSF at this Z step, um (the data's).")] = None,
    like: Annotated[str | None, typer.Option("-like", metavar="FILE", help="Write the PSF at the voxel size of this data file.")] = None,
    super_xy: Annotated[
        int, typer.Option("-super", metavar="K", help="Write the PSF on a grid K times finer in XY, for super_epr / epr -super K (band-limited interpolation).")
    ] = 1,
    super_z: Annotated[int, typer.Option("-superz", metavar="KZ", help="Also KZ times finer in Z (for epr -superz KZ).")] = 1,
) -> None:
    """Prepare a 3-D point spread function from images of sub-resolution beads.

    Estimates the background plane by plane and the noise, finds the bead (or several:
    -beads N, or several files) and moves its centre to the middle of a symmetric sub-region
    (square in XY) by a Fourier shift, separates the bead's light from the noise floor
    (multiresolution support) and cuts the box where that light ends, optionally averages
    over rings about the axis (-radial), removes with -mask what the optics cannot transmit
    (-modality), brings the PSF to the data's sampling (-size_out, -spaced_out, -like),
    normalises. Output float32. -V reports background, noise, peak SNR, FWHM, the light in
    the tails and outside the OTF support; what looks wrong is always said.
    """
    if len(files) < 2:
        raise typer.BadParameter("give the bead image(s), then the output", param_hint="IN... OUT")
    inputs, output = files[:-1], files[-1]
    for flag, k in (("-super", super_xy), ("-superz", super_z), ("-beads", beads)):
        if k < 1:
            raise typer.BadParameter(f"must be an integer >= 1, got {k}", param_hint=flag)
    if norm not in NORMS:
        raise typer.BadParameter(f"must be one of {', '.join(NORMS)}, got {norm!r}", param_hint="-norm")
    if modality not in MODALITIES:
        raise typer.BadParameter(f"must be one of {', '.join(MODALITIES)}, got {modality!r}", param_hint="-modality")
    for flag, value in (("-excitation", excitation), ("-sheet_NA", sheet_na), ("-NA", na), ("-n", n), ("-lambda", wavelength)):
        if value is not None and not (math.isfinite(value) and value > 0):
            raise typer.BadParameter(f"must be a positive number, got {value}", param_hint=flag)
    if mask is not None and modality == "lightsheet" and sheet_na is None:
        raise typer.BadParameter("a light-sheet mask needs the sheet's illumination NA", param_hint="-sheet_NA")
    if (size_out is not None or spaced_out is not None or like is not None) and (super_xy, super_z) != (1, 1):
        raise typer.BadParameter("give either the data's sampling (-size_out/-spaced_out/-like) or a finer grid (-super/-superz)", param_hint="-super")
    target = check_output(output, *inputs, *([like] if like else []))
    images = []
    for path in inputs:
        image = eprjax.read(path)
        log.info("read %s: %s", path, describe(image))
        if image.ndim != 3:
            raise eprjax.ParameterError(f"{path}: a bead image must be one 3-D stack (Z, Y, X), got axes {image.axes}")
        images.append(image)
    image = images[0]
    z_known, y_known, x_known = image.voxel_size_um
    pixel = _voxel(size, x_known if x_known is not None else y_known, "-size", "XY pixel size", inputs[0])
    step = _voxel(spaced, z_known, "-spaced", "Z step", inputs[0])
    for path, other in zip(inputs[1:], images[1:], strict=True):
        oz, _, ox = other.voxel_size_um
        if size is None and spaced is None and (oz, ox) != (z_known, x_known) and None not in (oz, ox):
            raise eprjax.ParameterError(f"{path}: its voxel size ({oz} x {ox} um) differs from {inputs[0]}'s; the beads must share one sampling")
    sub = None
    if subxy is not None or subz is not None:
        full = image.shape
        sub = (subz if subz is not None else full[0], subxy if subxy is not None else min(full[1:]))
        if min(sub) < 1:
            raise typer.BadParameter("sub-region sizes must be >= 1", param_hint="-subxy/-subz")
    centre = None if center is None else (center[2], center[1], center[0])
    out_voxel = _sampling_out(size_out, spaced_out, like, (step, pixel, pixel))
    stacks = [np.asarray(im.data) for im in images]
    psf = eprjax.prepare_psf(
        stacks if len(stacks) > 1 else stacks[0], na=na, n=n, pixel_size_um=pixel, z_step_um=step,
        wavelength_um=wavelength, norm=norm, mask=mask, modality=modality, excitation_um=excitation, sheet_na=sheet_na,
        size=sub, background=background, centre=centre, beads=beads, distill=not nodistill, radial=radial,
        voxel_size_out_um=out_voxel,
    )
    _report(psf, modality == "lightsheet")
    if mask is not None:
        log.info("outside the OTF support (%s mask %g): %.3g%% of the energy, removed", modality, mask, 100 * float(psf.masked_fraction))
    value, voxel = np.asarray(psf.value), psf.voxel_size_um
    if out_voxel is not None:
        log.info("brought to the data's sampling, %.4g x %.4g um (z, xy), by band-limited resampling: %s", out_voxel[0], out_voxel[1], "x".join(map(str, value.shape)))
    cz, cy, cx = psf.centre
    fz, fy, fx = psf.fwhm_um
    notes = [
        f"preppsf: {len(psf.centres)} bead(s), centre x {cx:.3f} y {cy:.3f} z {cz:.3f}, background {float(psf.background):.4g}, noise {psf.noise:.3g}",
        f"preppsf: FWHM x {fx:.3f} y {fy:.3f} z {fz:.3f} um, tails {100 * psf.tail_fraction:.1f}%, {'distilled' if not nodistill else 'not distilled'}{', radial' if radial else ''}",
    ]
    if out_voxel is not None:
        notes.append(f"preppsf: resampled from {step:.4g} x {pixel:.4g} um to {out_voxel[0]:.4g} x {out_voxel[1]:.4g} um (z, xy)")
    if (super_z, super_xy) != (1, 1):
        factor = (super_z, super_xy, super_xy)
        value = np.asarray(eprjax.fine_psf(value, factor))
        voxel = fine_voxel_size(voxel, factor)
        log.info("brought onto a grid %dx%dx%d finer (z, y, x): %s", *factor, "x".join(map(str, value.shape)))
        notes.append(f"preppsf: on a grid {super_z}x{super_xy}x{super_xy} finer (z, y, x), band-limited interpolation")
    out = eprjax.Image(value, voxel_size_um=voxel, history=image.history + (history_line(),)).add_history(*notes)
    written = eprjax.write(target, out)
    log.info("wrote %s: %s", written, describe(out))


def _check_offset(image: eprjax.Image, gain: float, read: float, name: str) -> None:
    """A warning when -gain is given without -offset or -dark and the dark level is far
    brighter than its noise allows for light: the camera's offset would count as photons."""
    if not (gain > 0 and read >= 0):
        return
    level, sigma, expected, extra = implied_offset(image.data, gain=gain, read_noise=read)
    if sigma < expected and extra > OFFSET_SHARE * level:
        log.warning(
            "%s: its dark level (%.4g counts) is far brighter than its noise allows for light at gain %g, read noise %g "
            "(noise %.3g counts, light of that level would have %.3g): it looks like a camera offset of about %.0f counts, "
            "which the RNL would count as photons; give -offset (or -dark)", name, level, gain, read, sigma, expected, extra,
        )




@command
def prepdata(
    paths: Annotated[
        list[str],
        typer.Argument(
            metavar="IN OUT | IN... -outdir DIR",
            help="The raw image (2-D, 3-D, or several volumes: T) and the corrected image to write (float32); or, with "
            "-outdir, any number of raw images (or patterns), each corrected into DIR under its own name.",
        ),
    ],
    bg_ref: Annotated[
        tuple[int, int, int] | None,
        typer.Option("-bg_ref", metavar="NX NY NZ", help="Subtract the background: the mean of the darkest NX x NY x NZ box."),
    ] = None,
    norm: Annotated[
        str,
        typer.Option("-norm", help="first: scale each plane (each volume of a time series) to the first one's total, undoing bleaching; none."),
    ] = "none",
    offset: Annotated[float | None, typer.Option("-offset", help="Camera offset to subtract, counts.")] = None,
    dark: Annotated[str | None, typer.Option("-dark", help="Dark image to subtract (one plane, or the image's shape).")] = None,
    flat: Annotated[str | None, typer.Option("-flat", help="Flat field to divide by (normalised to mean 1; one plane, or the image's shape).")] = None,
    gain: Annotated[float | None, typer.Option("-gain", help="Camera gain, electrons per count (for the RNL).")] = None,
    read: Annotated[float | None, typer.Option("-read", help="Camera read noise, electrons RMS (for the RNL).")] = None,
    rnl: Annotated[
        bool, typer.Option("-rnl", help="Report the residual noise limit and alpha = RNL^2, and store them for epr -sm rnl (always done where the noise is known: from -gain and -read, else measured on the data); an error where it is not.")
    ] = False,
    size: Annotated[float | None, typer.Option("-size", metavar="UM", help="The XY pixel size, um, written with the output (default: from the file).")] = None,
    spaced: Annotated[float | None, typer.Option("-spaced", metavar="UM", help="The Z step, um, written with the output (default: from the file).")] = None,
    outdir: Annotated[str | None, typer.Option("-outdir", metavar="DIR", help="Correct every IN given into this folder (made if missing), each under its own name.")] = None,
) -> None:
    """Correct a raw image: basic (offset or dark, flat field), then background, then temporal.

    It reports the residual noise limit (RNL, noise RMS over signal RMS) and the alpha it
    suggests, RNL^2, and keeps both in the output's history, where epr -sm rnl finds them:
    the noise from the camera model with -gain and -read, else measured on the data
    themselves (a Poisson-Gaussian model; -V shows it as a camera's gain and read noise, and
    compares it with -gain and -read when they are given).
    """
    if norm not in ("none", "first"):
        raise typer.BadParameter(f"must be first or none, got {norm!r}", param_hint="-norm")
    if offset is not None and not math.isfinite(offset):
        raise typer.BadParameter(f"must be a finite number of counts, got {offset}", param_hint="-offset")
    settings = dict(bg_ref=bg_ref, norm=norm, offset=offset, dark=dark, flat=flat, gain=gain, read=read, rnl=rnl, size=size, spaced=spaced)
    pairs = file_pairs(paths, outdir)
    for_each_file(pairs, lambda input, output: _prepare_one(input, output, label=f"{input}: " if len(pairs) > 1 else "", **settings))


def _prepare_one(
    input: str, output: str, *, bg_ref: tuple[int, int, int] | None, norm: str, offset: float | None, dark: str | None,
    flat: str | None, gain: float | None, read: float | None, rnl: bool, size: float | None, spaced: float | None, label: str = "",
) -> None:
    """prepdata on one file; ``label`` leads its RNL line."""
    inputs = [input] + [f for f in (dark, flat) if f is not None]
    target = check_output(output, *inputs)
    image = with_voxel_size(eprjax.read(input), size, spaced, input)
    log.info("read %s: %s", input, describe(image))
    if gain is not None and read is not None and offset is None and dark is None:
        _check_offset(image, gain, read, input)
    extra = {name: np.asarray(eprjax.read(path).data, np.float32) for name, path in (("dark", dark), ("flat", flat)) if path}
    for name, frame in extra.items():
        if frame.ndim == 3 and frame.shape[0] == 1 and frame.shape[1:] == image.shape[-2:]:
            extra[name] = frame[0]  # one plane, as i2i files hold it
    prepared = eprjax.prepare_data(
        np.asarray(image.data, np.float32), offset=offset, gain=gain, read_noise=read,
        bg_ref=bg_ref, norm=norm, **extra,
    )
    lines = [history_line()]
    if bg_ref is not None:
        log.info("background %s per voxel", np.array2string(np.asarray(prepared.background), precision=4))
    if norm == "first":
        factors = np.asarray(prepared.scale)
        log.info("temporal normalisation: factors %.4g to %.4g", factors.min(), factors.max())
    camera = gain is not None and read is not None
    noise = prepared.noise
    if noise is not None:
        log.info("the data's own noise: %s", noise.describe(offset))
        if camera:
            log.info(
                "measured against the camera's numbers: gain %.3g +- %.2g electrons per count (given %g)%s",
                noise.gain, noise.gain_error, gain,
                f", read noise {noise.read_noise(offset):.3g} +- {noise.read_noise_error(offset):.2g} electrons (given {read:g})" if offset is not None else "",
            )
            if not 0.8 < noise.gain / gain < 1.25 and abs(noise.gain - gain) > 3 * noise.gain_error:
                log.warning("%s: the noise measured on the data implies a gain of %.3g electrons per count, not %g: check -gain", input, noise.gain, gain)
    value, alpha = float(prepared.rnl), float(prepared.alpha)
    if math.isfinite(value):
        where = "" if camera else f", {MEASURED}"
        typer.echo(f"{label}RNL {value:.4g}{where}; suggested smoothness alpha = RNL^2 = {alpha:.4g}")
        lines.append(RNL_LINE.format(rnl=value, alpha=alpha, source=where))
    elif rnl:
        raise eprjax.ParameterError(
            "-rnl: the noise could not be measured on this image (at least 5x5x5 voxels with noise are needed): give the camera's -gain and -read"
        )
    out = image.replace(data=np.asarray(prepared.value)).add_history(*lines)
    written = eprjax.write(target, out)
    log.info("wrote %s: %s", written, describe(out))
