"""``preppsf``: a measured bead image prepared as the PSF epr needs, with the originals' flags."""

from __future__ import annotations

import logging
from typing import Annotated

import numpy as np
import typer

import eprjax
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
) -> None:
    """Prepare a 3-D point spread function from an image of a sub-resolution bead.

    Subtracts the background, finds the bead's centre and moves it to the middle of a
    symmetric sub-region (square in XY) by a Fourier shift, normalises, and with -mask
    removes what the optics cannot transmit; negatives are clipped. Output float32.
    """
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
    out = eprjax.Image(
        np.asarray(psf.value), voxel_size_um=(step, pixel, pixel),
        history=image.history + (history_line(),),
    ).add_history(
        f"preppsf: centre x {cx:.3f} y {cy:.3f} z {cz:.3f}, background {float(psf.background):.4g}"
    )
    written = eprjax.write(target, out)
    log.info("wrote %s: %s", written, describe(out))
