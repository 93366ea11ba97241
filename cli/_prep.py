"""``preppsf``: a measured bead image prepared as the PSF epr needs, with the originals' flags."""

from __future__ import annotations

import logging
from typing import Annotated

import numpy as np
import typer

import eprjax
from eprjax._fine import fine_voxel_size
from eprjax._psf import DEFAULT_WAVELENGTH_UM, NORMS

from ._convert import describe
from ._frame import check_output, command, history_line

log = logging.getLogger("eprjax")


def _voxel(given: float | None, known: float | None, flag: str, what: str, name: str) -> float:
    if given is not None:
        if not given > 0:
            raise typer.BadParameter(f"must be > 0 um, got {given}", param_hint=flag)
        return given
    if known is None:
        raise eprjax.ParameterError(f"{name}: the file does not say its {what}; give it with {flag}")
    return known


@command
def preppsf(
    input: Annotated[str, typer.Argument(metavar="IN", help="The bead image (after prepdata's basic corrections, without -norm).")],
    output: Annotated[str, typer.Argument(metavar="OUT", help="The prepared PSF to write (float32, origin at the centre).")],
    na: Annotated[float, typer.Option("-NA", help="Numerical aperture of the objective.")],
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
        typer.Option("-mask", metavar="R", help="Remove what lies outside the widefield OTF's theoretical support, scaled by R (1: as theory says)."),
    ] = None,
    center: Annotated[
        tuple[float, float, float] | None,
        typer.Option("-center", metavar="X Y Z", help="The PSF's origin in the input, voxels (default: the bead's centre, found to sub-voxel precision)."),
    ] = None,
    subxy: Annotated[int | None, typer.Option("-subxy", help="Width of the square XY sub-region, voxels (odd; default: the largest that fits).")] = None,
    subz: Annotated[int | None, typer.Option("-subz", help="Depth of the sub-region, planes (odd; default: the largest that fits).")] = None,
    background: Annotated[
        float | None, typer.Option("-background", help="Background to subtract, per voxel (default: the median of the stack's border).")
    ] = None,
    super_xy: Annotated[
        int, typer.Option("-super", metavar="K", help="Write the PSF on a grid K times finer in XY, for super_epr / epr -super K (band-limited interpolation).")
    ] = 1,
    super_z: Annotated[int, typer.Option("-superz", metavar="KZ", help="Also KZ times finer in Z (for epr -superz KZ).")] = 1,
) -> None:
    """Prepare a 3-D point spread function from an image of a sub-resolution bead.

    Subtracts the background, finds the bead's centre and moves it to the middle of a
    symmetric sub-region (square in XY) by a Fourier shift, normalises, and with -mask
    removes what the optics cannot transmit; negatives are clipped. Output float32. With
    -super K, the PSF is brought onto a grid K times finer (for super_epr).
    """
    for flag, k in (("-super", super_xy), ("-superz", super_z)):
        if k < 1:
            raise typer.BadParameter(f"must be an integer >= 1, got {k}", param_hint=flag)
    if norm not in NORMS:
        raise typer.BadParameter(f"must be one of {', '.join(NORMS)}, got {norm!r}", param_hint="-norm")
    target = check_output(output, input)
    image = eprjax.read(input)
    log.info("read %s: %s", input, describe(image))
    if image.ndim != 3:
        raise eprjax.ParameterError(f"{input}: a bead image must be one 3-D stack (Z, Y, X), got axes {image.axes}")
    z_known, y_known, x_known = image.voxel_size_um
    pixel = _voxel(size, x_known if x_known is not None else y_known, "-size", "XY pixel size", input)
    step = _voxel(spaced, z_known, "-spaced", "Z step", input)
    sub = None
    if subxy is not None or subz is not None:
        full = image.shape
        sub = (subz if subz is not None else full[0], subxy if subxy is not None else min(full[1:]))
        if min(sub) < 1:
            raise typer.BadParameter("sub-region sizes must be >= 1", param_hint="-subxy/-subz")
    centre = None if center is None else (center[2], center[1], center[0])
    psf = eprjax.prepare_psf(
        np.asarray(image.data, np.float32), na=na, n=n, pixel_size_um=pixel, z_step_um=step,
        wavelength_um=wavelength, norm=norm, mask=mask, size=sub, background=background, centre=centre,
    )
    cz, cy, cx = psf.centre
    sz, sy, sx = psf.shift
    log.info("background %.4g per voxel", float(psf.background))
    log.info("bead centre x %.3f, y %.3f, z %.3f (voxels); shifted by x %.3f, y %.3f, z %.3f", cx, cy, cz, sx, sy, sz)
    log.info("sum after background subtraction, before normalisation: %.6g", float(psf.total))
    if mask is not None:
        log.info("outside the OTF support (mask %g): %.3g%% of the energy, removed", mask, 100 * float(psf.masked_fraction))
    value, voxel = np.asarray(psf.value), (step, pixel, pixel)
    notes = [f"preppsf: centre x {cx:.3f} y {cy:.3f} z {cz:.3f}, background {float(psf.background):.4g}"]
    if (super_z, super_xy) != (1, 1):
        factor = (super_z, super_xy, super_xy)
        value = np.asarray(eprjax.fine_psf(value, factor))
        voxel = fine_voxel_size(voxel, factor)
        log.info("brought onto a grid %dx%dx%d finer (z, y, x): %s", *factor, "x".join(map(str, value.shape)))
        notes.append(f"preppsf: on a grid {super_z}x{super_xy}x{super_xy} finer (z, y, x), band-limited interpolation")
    out = eprjax.Image(value, voxel_size_um=voxel, history=image.history + (history_line(),)).add_history(*notes)
    written = eprjax.write(target, out)
    log.info("wrote %s: %s", written, describe(out))


RNL_LINE = "prepdata: RNL {rnl:.6g}, alpha = RNL^2 = {alpha:.6g}"


@command
def prepdata(
    input: Annotated[str, typer.Argument(metavar="IN", help="The raw image: 2-D, 3-D, or several volumes (T).")],
    output: Annotated[str, typer.Argument(metavar="OUT", help="The corrected image to write (float32).")],
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
        bool, typer.Option("-rnl", help="Report the residual noise limit and alpha = RNL^2, and store them for epr -sm rnl (needs -gain and -read).")
    ] = False,
) -> None:
    """Correct a raw image: basic (offset or dark, flat field), then background, then temporal.

    With the camera's gain and read noise it reports the residual noise limit (RNL, noise RMS
    over signal RMS from the camera model) and the alpha it suggests, RNL^2, and keeps both in
    the output's history, where epr -sm rnl finds them.
    """
    if norm not in ("none", "first"):
        raise typer.BadParameter(f"must be first or none, got {norm!r}", param_hint="-norm")
    if rnl and (gain is None or read is None):
        raise typer.BadParameter("the RNL needs the camera's -gain and -read", param_hint="-rnl")
    inputs = [input] + [f for f in (dark, flat) if f is not None]
    target = check_output(output, *inputs)
    image = eprjax.read(input)
    log.info("read %s: %s", input, describe(image))
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
    if gain is not None and read is not None:
        value, alpha = float(prepared.rnl), float(prepared.alpha)
        typer.echo(f"RNL {value:.4g}; suggested smoothness alpha = RNL^2 = {alpha:.4g}")
        lines.append(RNL_LINE.format(rnl=value, alpha=alpha))
    out = image.replace(data=np.asarray(prepared.value)).add_history(*lines)
    written = eprjax.write(target, out)
    log.info("wrote %s: %s", written, describe(out))
