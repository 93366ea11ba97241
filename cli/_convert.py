"""``eprjax convert``: between i2i, TIFF, OME-TIFF and OME-Zarr, keeping voxel sizes and history."""

from __future__ import annotations

import logging
from typing import Annotated

import typer

import eprjax

from ._frame import check_output, command, history_line

log = logging.getLogger("eprjax")


def describe(image: eprjax.Image) -> str:
    """``ZYX 64x256x256 uint16, voxel (z, y, x) 0.25 x 0.1 x 0.1 um``."""
    voxel = " x ".join("?" if v is None else f"{v:.4g}" for v in image.voxel_size_um)
    shape = "x".join(str(n) for n in image.shape)
    return f"{image.axes} {shape} {image.dtype}, voxel (z, y, x) {voxel} um"


@command
def convert(
    input: Annotated[str, typer.Argument(metavar="IN", help="Image to read (.i2i, .tif, .ome.tif, .ome.zarr; no ending means .i2i).")],
    output: Annotated[str, typer.Argument(metavar="OUT", help="Image to write; the format follows the name.")],
    int16: Annotated[
        bool,
        typer.Option(
            "-int16",
            help="Write int16: uint16 values are halved (as mmtoi2i -int16), int16 and 8-bit kept, "
            "anything else rounded and clipped to -32768..32767 (the count clipped is recorded).",
        ),
    ] = False,
    int16_scale: Annotated[
        bool,
        typer.Option(
            "-int16_scale",
            help="Write int16 scaled so that the largest magnitude becomes 32767; the factor is recorded in the history.",
        ),
    ] = False,
    size: Annotated[
        float | None, typer.Option("-size", help="Set the XY pixel size, um (overrides the file's).", min=0.0)
    ] = None,
    spaced: Annotated[
        float | None, typer.Option("-spaced", help="Set the Z step, um (overrides the file's).", min=0.0)
    ] = None,
    channel: Annotated[
        int | None, typer.Option("-channel", help="For a multi-channel TIFF or OME-Zarr: the channel to take, from 0.", min=0)
    ] = None,
    ngff: Annotated[
        str,
        typer.Option("-ngff", metavar="VERSION", help="For an OME-Zarr output: the NGFF version, 0.4 (Zarr 2; Fiji, BigDataViewer) or 0.5 (Zarr 3)."),
    ] = "0.4",
    pyramid: Annotated[
        int,
        typer.Option("-pyramid", metavar="N", help="For an OME-Zarr output: add N levels of lower resolution for viewing, each half the one above in X and Y.", min=0),
    ] = 0,
) -> None:
    """Convert an image between i2i, TIFF, OME-TIFF and OME-Zarr, keeping its voxel size and history.

    The pixels keep their type unless int16 is asked for, and how the values were brought to
    int16 is then recorded in the history (i2i holds int16, float32 and complex: other types
    become float32 there, lossless for 8- and 16-bit data). An OME-Zarr image is a folder
    (.ome.zarr), read and written a chunk at a time.
    """
    if int16 and int16_scale:
        raise typer.BadParameter("choose one of -int16 and -int16_scale", param_hint="-int16")
    from ._inputs import check_voxel_sizes  # (here: _inputs imports this module)

    check_voxel_sizes(size, spaced)
    if ngff not in ("0.4", "0.5"):
        raise typer.BadParameter(f"must be 0.4 or 0.5, got {ngff!r}", param_hint="-ngff")
    target = check_output(output, input)
    image = eprjax.read(input, channel=channel)
    log.info("read %s: %s", input, describe(image))
    z, y, x = image.voxel_size_um
    voxel = (spaced if spaced is not None else z, size if size is not None else y, size if size is not None else x)
    image = image.replace(voxel_size_um=voxel).add_history(history_line())
    mode = "scale" if int16_scale else "auto" if int16 else None
    written = eprjax.write(target, image, int16=mode, ngff=ngff, pyramid=pyramid)
    log.info("wrote %s", written)
