"""Images as napari layers and back: the reader, the writer and the sample data.

A layer made from an eprjax `Image` carries the voxel size as its scale (um per voxel,
(z, y, x), with 1 for a time axis and where the file does not say) and, under the
``"eprjax"`` key of its metadata, what the file said: the voxel size (None where unknown),
the history and the origin. The writer takes them back: the scale where the layer has one
(an unknown voxel size left at 1 stays unknown), the history, with a line of its own where
the layer came out of one of our widgets. Nothing here imports napari: the reader and writer
work on napari's plain layer data, (data, attributes, kind) tuples.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

import eprjax
from eprjax._io import file_format
from eprjax._simulate import SEED_OPTICS, simulate

KEY = "eprjax"  # the layer metadata's entry for what eprjax knows of the image
SAMPLE_SHAPE = (24, 64, 64)  # the demo's small acquisition: restored in seconds on a laptop's CPU
SAMPLE_VOXEL_UM = (SEED_OPTICS["z_step_um"], SEED_OPTICS["pixel_size_um"], SEED_OPTICS["pixel_size_um"])
SAMPLE_BG_REF = (5, 5, 3)  # the demo's prepdata -bg_ref

LayerData = tuple[Any, dict[str, Any], str]


def scale_of(voxel_size_um: Sequence[float | None], ndim: int) -> tuple[float, ...]:
    """The layer scale for an image of ``ndim`` axes: (z, y, x) um, 1 where unknown, and 1
    for a leading time axis (or nothing for a plane's missing Z)."""
    zyx = tuple(1.0 if v is None else float(v) for v in voxel_size_um)
    return ((1.0,) * (ndim - 3) + zyx)[-ndim:] if ndim >= 3 else zyx[-ndim:]


def layer_data(image: eprjax.Image, name: str, **attributes: Any) -> LayerData:
    """``image`` as napari layer data: its pixels, its voxel size as the scale, and what the
    file said in the metadata (module text)."""
    meta = {KEY: {"voxel_size_um": tuple(image.voxel_size_um), "history": list(image.history), "origin": tuple(image.origin)}}
    extra_meta = attributes.pop("metadata", {})
    meta[KEY].update(extra_meta)
    return image.data, {"name": name, "scale": scale_of(image.voxel_size_um, image.ndim), "metadata": meta, **attributes}, "image"


def voxel_size_of(scale: Sequence[float] | None, metadata: dict[str, Any] | None) -> tuple[float | None, float | None, float | None]:
    """The (z, y, x) voxel size, um, of a layer with ``scale`` and ``metadata``: the scale's,
    except where the file said nothing and the scale is still 1 (unknown stays unknown)."""
    said = ((metadata or {}).get(KEY) or {}).get("voxel_size_um") or (None, None, None)
    said = tuple(said)[-3:]
    said = (None,) * (3 - len(said)) + said
    zyx = tuple(float(s) for s in (() if scale is None else scale))[-3:]
    zyx = (1.0,) * (3 - len(zyx)) + zyx
    return tuple(None if (known is None and s == 1.0) else s for s, known in zip(zyx, said, strict=True))  # type: ignore[return-value]


def history_of(metadata: dict[str, Any] | None) -> tuple[str, ...]:
    """The history a layer carries (its file's, and what our widgets added)."""
    return tuple(((metadata or {}).get(KEY) or {}).get("history") or ())


def get_reader(path: str | list[str]) -> Callable[[str | list[str]], list[LayerData]] | None:
    """napari's reader hook: the reader for an i2i, TIFF, OME-TIFF or OME-Zarr path (or a
    list of them), or None for anything else, so that napari tries another plugin."""
    paths = [path] if isinstance(path, (str, os.PathLike)) else list(path)
    for p in paths:
        try:
            file_format(p)
        except eprjax.EprjaxError:
            return None
        if str(p).lower().endswith(".zarr") and not os.path.isdir(p):
            return None
    return read_layers


def read_layers(path: str | list[str]) -> list[LayerData]:
    """One image layer per file, named after it (errors: eprjax's one-line messages)."""
    paths = [path] if isinstance(path, (str, os.PathLike)) else list(path)
    layers = []
    for p in paths:
        image = eprjax.read(p)
        name = os.path.basename(os.path.normpath(str(p)))
        layers.append(layer_data(image, name, metadata={"path": str(p)}))
    return layers


def write_image(path: str, data: Any, attributes: dict[str, Any]) -> list[str]:
    """napari's writer hook for one image layer: written whole or not at all, in the format
    the name asks for, with the layer's voxel size and history. Returns the path written."""
    metadata = attributes.get("metadata")
    image = eprjax.Image(
        np.asarray(data),
        voxel_size_um=voxel_size_of(attributes.get("scale"), metadata),
        history=history_of(metadata),
    )
    return [str(eprjax.write(path, image))]


@functools.cache
def _demo() -> eprjax._simulate.Acquisition:
    return simulate(SAMPLE_SHAPE)


def sample_bead() -> list[LayerData]:
    """The demo's bead as the camera recorded it (int16 counts, background included): the
    input of Prepare PSF."""
    image = eprjax.Image(_demo().bead, voxel_size_um=SAMPLE_VOXEL_UM, history=("demo: a simulated bead",))
    return [layer_data(image, "demo bead", colormap="magma")]


def sample_raw_specimen() -> list[LayerData]:
    """The demo's specimen as the camera recorded it (int16 counts, background and bleaching
    included): the input of Prepare data."""
    image = eprjax.Image(_demo().image, voxel_size_um=SAMPLE_VOXEL_UM, history=("demo: a simulated specimen",))
    return [layer_data(image, "demo specimen (raw)")]


def sample_specimen() -> list[LayerData]:
    """The demo's specimen after the demo's prepdata (background removed, planes scaled to
    the first's): the input of Restore."""
    prepared = eprjax.prepare_data(_demo().image, bg_ref=SAMPLE_BG_REF, norm="first")
    note = f"prepdata -bg_ref {' '.join(map(str, SAMPLE_BG_REF))} -norm first (RNL {float(prepared.rnl):.4g})"
    image = eprjax.Image(np.asarray(prepared.value, np.float32), voxel_size_um=SAMPLE_VOXEL_UM, history=("demo: a simulated specimen", note))
    return [layer_data(image, "demo specimen", metadata={"rnl": float(prepared.rnl)})]
