"""``mmtoi2i``: every Micro-Manager acquisition in a folder, one i2i file per position and channel."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated

import typer

import eprjax

from ._frame import command, history_line

log = logging.getLogger("eprjax")


@command
def mmtoi2i(
    directory: Annotated[
        Path,
        typer.Argument(
            metavar="DIR",
            help="Folder with Micro-Manager acquisitions (searched recursively), or one *_MMStack_*.ome.tif file.",
        ),
    ],
    int16: Annotated[
        bool,
        typer.Option(
            "-int16",
            help="Write int16 (type I) as the original mmtoi2i did: uint16 values are halved to fit; "
            "the default is float32 (type R), which keeps every value.",
        ),
    ] = False,
    outdir: Annotated[
        Path | None,
        typer.Option("-outdir", "-o", help="Where to write the i2i files (default: the current directory)."),
    ] = None,
    list_only: Annotated[
        bool, typer.Option("-list", help="Only list the stacks that would be written, with their shapes.")
    ] = False,
) -> None:
    """Convert Micro-Manager acquisitions to i2i.

    Reads image stack files (*_MMStack_*.ome.tif, continued over several files) and folders
    of single-plane TIFFs with metadata.txt. Each position and channel becomes one file,
    <acquisition>_<position>_<channel>.i2i, holding all its time points (T volumes); the
    voxel size travels from the metadata into the file.
    """
    out = Path(".") if outdir is None else outdir
    if not list_only and not out.is_dir():
        raise eprjax.ParameterError(f"{out}: the output directory does not exist")
    found = eprjax.find_acquisitions(directory)
    if not found:
        raise eprjax.FileFormatError(f"{directory}: no Micro-Manager acquisition found")
    names: dict[str, int] = {}
    for acq in found:
        name = acq.output_name
        names[name] = names.get(name, 0) + 1
        if names[name] > 1:  # the same prefix in two folders
            name = f"{name}_{names[name]}"
        target = out / f"{name}.i2i"
        voxel = " x ".join("?" if v is None else f"{v:.4g}" for v in acq.voxel_size_um)
        shape = "x".join(str(n) for n in acq.shape)
        if list_only:
            typer.echo(f"{target}\t{shape} (TZYX) {acq.dtype}\tvoxel (z, y, x) {voxel} um\tfrom {acq.source}")
            continue
        image = acq.read().add_history(
            history_line(), f"source: {acq.source.name} position {acq.position} channel {acq.channel}"
        )
        eprjax.write(target, image, int16="auto" if int16 else None)
        log.info("wrote %s: %s (TZYX) %s, voxel (z, y, x) %s um", target, shape, acq.dtype, voxel)
