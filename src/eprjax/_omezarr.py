"""OME-Zarr images (OME-NGFF 0.4 and 0.5), read lazily and written a chunk at a time.

An OME-Zarr image is a folder: a Zarr group whose attributes hold ``multiscales`` (the axes,
with their types and units, and one array per resolution level with its scale), and the
arrays themselves. NGFF 0.4 (https://ngff.openmicroscopy.org/0.4/) stores them in Zarr
format 2 with "/" between chunk indices; 0.5 (https://ngff.openmicroscopy.org/0.5/) in Zarr
format 3, the metadata under the ``ome`` attribute and the axes' names also as the arrays'
``dimension_names``. The axes are time, then channel, then two or three space axes.

What eprjax adds is in its own attribute, ``eprjax``: the history and the (y, x) origin.
Space axes are written in micrometres; an unknown voxel size is written as scale 1 without
a unit, and read back as unknown.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from ._errors import FileFormatError, ParameterError
from ._image import Image

log = logging.getLogger("eprjax")

VERSIONS = ("0.4", "0.5")
DEFAULT_VERSION = "0.4"  # what Fiji's readers and BigDataViewer read
CHUNK_SIDE = 512  # Y and X chunk size (at most)
CHUNK_BYTES = 4 << 20  # a chunk holds about this much: the Z depth follows
# UDUNITS-2 length units that the spec lists, in micrometres
_UNITS_UM = {
    "angstrom": 1e-4, "picometer": 1e-6, "nanometer": 1e-3, "micrometer": 1.0, "millimeter": 1e3,
    "centimeter": 1e4, "decimeter": 1e5, "meter": 1e6,
}
_UNIT_ALIASES = {"um": "micrometer", "µm": "micrometer", "nm": "nanometer", "mm": "millimeter", "micron": "micrometer"}


def is_ome_zarr(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` is a folder holding a Zarr group (format 2 or 3) with OME metadata."""
    attrs = _group_attributes(Path(path))
    if attrs is None:
        return False
    ome = attrs["ome"] if isinstance(attrs.get("ome"), dict) else attrs
    return "multiscales" in ome or "bioformats2raw.layout" in ome


def _group_attributes(folder: Path) -> dict[str, Any] | None:
    """The group attributes read from the metadata files themselves (no Zarr needed), or None
    when ``folder`` is not a Zarr group."""
    try:
        if (folder / "zarr.json").is_file():
            meta = json.loads((folder / "zarr.json").read_text())
            if isinstance(meta, dict) and meta.get("node_type") == "group":
                attrs = meta.get("attributes", {})
                return attrs if isinstance(attrs, dict) else {}
            return None
        if (folder / ".zgroup").is_file():
            attrs_file = folder / ".zattrs"
            attrs = json.loads(attrs_file.read_text()) if attrs_file.is_file() else {}
            return attrs if isinstance(attrs, dict) else {}
    except (OSError, ValueError):
        return None
    return None


# -- reading -------------------------------------------------------------------------------


class LazyArray:
    """A Zarr array seen with some axes fixed at one index (a channel, a time point of one):
    sliced without reading more than asked, converted to NumPy only when used. Read errors
    (a damaged chunk) become one-line `FileFormatError`s naming the file."""

    def __init__(self, array: Any, fixed: dict[int, int], name: str) -> None:
        self.array = array
        self.fixed = fixed
        self.name = name
        self.shape = tuple(int(n) for i, n in enumerate(array.shape) if i not in fixed)
        self.dtype = np.dtype(array.dtype)
        self.ndim = len(self.shape)
        self.size = math.prod(self.shape)
        self.chunks = tuple(int(c) for i, c in enumerate(array.chunks) if i not in fixed)

    def _full_key(self, key: Any) -> tuple[Any, ...]:
        key = key if isinstance(key, tuple) else (key,)
        if any(k is Ellipsis for k in key):
            at = next(i for i, k in enumerate(key) if k is Ellipsis)
            key = key[:at] + (slice(None),) * (self.ndim - len(key) + 1) + key[at + 1 :]
        if len(key) > self.ndim:
            raise IndexError(f"too many indices: {len(key)} for {self.ndim} axes")
        key = key + (slice(None),) * (self.ndim - len(key))
        rest = iter(key)
        return tuple(self.fixed[i] if i in self.fixed else next(rest) for i in range(len(self.array.shape)))

    def __getitem__(self, key: Any) -> np.ndarray:
        full = self._full_key(key)
        try:
            return np.asarray(self.array[full])
        except (IndexError, TypeError):
            raise
        except Exception as e:
            raise FileFormatError(f"{self.name}: cannot read its pixels ({type(e).__name__}: {' '.join(str(e).split())})") from None

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        return np.asarray(self[...], dtype=dtype)

    def __len__(self) -> int:
        return self.shape[0]


def _multiscale(attrs: dict[str, Any], name: str) -> tuple[str, dict[str, Any]]:
    """(version, the first multiscale) of an image group's attributes."""
    if "ome" in attrs:  # 0.5 and later
        ome = attrs["ome"]
        version = str(ome.get("version", "")) if isinstance(ome, dict) else ""
        multiscales = ome.get("multiscales") if isinstance(ome, dict) else None
    else:
        multiscales = attrs.get("multiscales")
        version = str(multiscales[0].get("version", "")) if isinstance(multiscales, list) and multiscales and isinstance(multiscales[0], dict) else ""
    if not isinstance(multiscales, list) or not multiscales or not isinstance(multiscales[0], dict):
        raise FileFormatError(f"{name}: no OME-Zarr image here (the group has no multiscales metadata)")
    if version not in VERSIONS:
        raise FileFormatError(f"{name}: OME-Zarr version {version or '(none)'}; eprjax reads {' and '.join(VERSIONS)}")
    return version, multiscales[0]


def _scale(transforms: Any, n: int, name: str) -> np.ndarray:
    """The product of the scale transformations in ``transforms`` (a list), per axis."""
    scale = np.ones(n)
    if transforms is None:
        return scale
    if not isinstance(transforms, list):
        raise FileFormatError(f"{name}: malformed coordinateTransformations")
    for t in transforms:
        if isinstance(t, dict) and t.get("type") == "scale":
            values = t.get("scale")
            if not isinstance(values, list) or len(values) != n or not all(isinstance(v, (int, float)) for v in values):
                raise FileFormatError(f"{name}: a scale transformation must give {n} numbers, got {values!r}")
            scale = scale * np.asarray(values, dtype=float)
    return scale


def _axes(multiscale: dict[str, Any], ndim: int, name: str) -> list[dict[str, Any]]:
    axes = multiscale.get("axes")
    if not isinstance(axes, list) or len(axes) != ndim:
        raise FileFormatError(f"{name}: the axes metadata must list {ndim} axes, got {axes!r}")
    out = []
    for a in axes:
        if not isinstance(a, dict) or not isinstance(a.get("name"), str):
            raise FileFormatError(f"{name}: malformed axis {a!r}")
        out.append(a)
    return out


def _axis_kind(axis: dict[str, Any]) -> str:
    kind = axis.get("type")
    if kind in ("time", "channel", "space"):
        return kind
    return {"t": "time", "c": "channel", "z": "space", "y": "space", "x": "space"}.get(axis["name"].lower(), "other")


def _in_um(axis: dict[str, Any], scale: float, name: str) -> float | None:
    unit = axis.get("unit")
    if unit is None:
        return None
    unit = _UNIT_ALIASES.get(str(unit).lower(), str(unit).lower())
    if unit not in _UNITS_UM:
        log.warning("%s: axis %s has the unit %r, which eprjax does not convert; its voxel size is left unknown", name, axis["name"], unit)
        return None
    value = scale * _UNITS_UM[unit]
    return value if math.isfinite(value) and value > 0 else None


def read_ome_zarr(path: str | os.PathLike[str], *, name: str | None = None, channel: int | None = None) -> Image:
    """The full-resolution image of an OME-Zarr folder (NGFF 0.4 or 0.5; a bioformats2raw
    folder gives its first image): axes (Y, X), (Z, Y, X) or (T, Z, Y, X), the pixels a
    `LazyArray` over the Zarr array (nothing is read until used), the voxel size in um from
    the scale and units, history and origin from eprjax's own attribute where present."""
    import zarr  # noqa: PLC0415 (zarr loads in about 0.3 s; only OME-Zarr readers pay for it)

    folder = Path(path)
    name = name or str(folder)
    attrs = _group_attributes(folder)
    if attrs is None:
        raise FileFormatError(f"{name}: not a Zarr group (no zarr.json or .zgroup)")
    ome = attrs["ome"] if isinstance(attrs.get("ome"), dict) else attrs
    if "multiscales" not in ome and "bioformats2raw.layout" in ome:
        folder = folder / "0"
        attrs = _group_attributes(folder)
        if attrs is None:
            raise FileFormatError(f"{name}: a bioformats2raw folder without its image 0")
    version, multiscale = _multiscale(attrs, name)
    datasets = multiscale.get("datasets")
    if not isinstance(datasets, list) or not datasets or not isinstance(datasets[0], dict) or not isinstance(datasets[0].get("path"), str):
        raise FileFormatError(f"{name}: the multiscales metadata list no datasets")
    level = datasets[0]
    try:
        array = zarr.open_array(folder / level["path"], mode="r")
    except Exception as e:
        raise FileFormatError(f"{name}: cannot open its array {level['path']!r} ({type(e).__name__}: {e})") from None
    ndim = len(array.shape)
    axes = _axes(multiscale, ndim, name)
    kinds = [_axis_kind(a) for a in axes]
    order = {"time": 0, "channel": 1, "space": 2}
    if "other" in kinds or kinds != sorted(kinds, key=order.__getitem__) or kinds.count("time") > 1 or kinds.count("channel") > 1 or not 2 <= kinds.count("space") <= 3:
        raise FileFormatError(f"{name}: axes {[a['name'] for a in axes]}: eprjax reads time, channel and 2 or 3 space axes, in that order")
    scale = _scale(level.get("coordinateTransformations"), ndim, name) * _scale(multiscale.get("coordinateTransformations"), ndim, name)
    fixed: dict[int, int] = {}
    if "channel" in kinds:
        ax = kinds.index("channel")
        n = int(array.shape[ax])
        if channel is None and n > 1:
            raise ParameterError(f"{name}: the image has {n} channels; choose one (channel=0..{n - 1})")
        if not 0 <= (channel or 0) < n:
            raise ParameterError(f"{name}: channel {channel} does not exist; it has channels 0..{n - 1}")
        fixed[ax] = channel or 0
    elif channel not in (None, 0):
        raise ParameterError(f"{name}: channel {channel} does not exist; the image has one channel")
    if "time" in kinds and array.shape[0] == 1:
        fixed[0] = 0
    space = [i for i, k in enumerate(kinds) if k == "space"]
    voxel = [_in_um(axes[i], float(scale[i]), name) for i in space]
    if len(voxel) == 2:
        voxel = [None, *voxel]
    own = attrs.get("eprjax", {}) if isinstance(attrs.get("eprjax"), dict) else {}
    history = [h for h in own.get("history", []) if isinstance(h, str)] if isinstance(own.get("history"), list) else []
    origin = own.get("origin") if isinstance(own.get("origin"), list) and len(own["origin"]) == 2 and all(isinstance(v, int) for v in own["origin"]) else (0, 0)
    data = LazyArray(array, fixed, name)
    log.debug("%s: OME-Zarr %s, array %s %s", name, version, tuple(array.shape), array.dtype)
    return Image(data, voxel_size_um=tuple(voxel), history=history, origin=tuple(origin))


# -- writing -------------------------------------------------------------------------------


def _chunks(shape: tuple[int, ...], itemsize: int) -> tuple[int, ...]:
    """Chunks of (1, ..., depth, side, side): whole planes' tiles, a few MiB each."""
    cy, cx = min(shape[-2], CHUNK_SIDE), min(shape[-1], CHUNK_SIDE)
    if len(shape) == 2:
        return (cy, cx)
    depth = int(max(1, min(shape[-3], CHUNK_BYTES // (cy * cx * itemsize))))
    return (1,) * (len(shape) - 3) + (depth, cy, cx)


def _halve(plane: np.ndarray) -> np.ndarray:
    """The mean of each 2 x 2 block of a (Y, X) plane (an odd last row or column by itself)."""
    p = plane.astype(np.float64) if plane.dtype.kind != "c" else plane.astype(np.complex128)
    y, x = p.shape
    p = np.pad(p, ((0, y % 2), (0, x % 2)), mode="edge")
    out = 0.25 * (p[0::2, 0::2] + p[1::2, 0::2] + p[0::2, 1::2] + p[1::2, 1::2])
    if plane.dtype.kind in "biu":
        info = np.iinfo(plane.dtype)
        out = np.clip(np.rint(out), info.min, info.max)
    return out.astype(plane.dtype)


def levels(shape: tuple[int, ...], pyramid: int) -> list[tuple[int, ...]]:
    """The shapes of the full-resolution array and of ``pyramid`` levels below it, each half
    the one above in Y and X (rounded up); Z and T are kept."""
    if not (isinstance(pyramid, (int, np.integer)) and pyramid >= 0):
        raise ParameterError(f"pyramid must be a number of levels >= 0, got {pyramid!r}")
    out = [tuple(shape)]
    for _ in range(int(pyramid)):
        y, x = out[-1][-2:]
        if y == 1 and x == 1:
            raise ParameterError(f"pyramid: {pyramid} levels halve {shape[-2]}x{shape[-1]} below one pixel; at most {len(out) - 1}")
        out.append((*out[-1][:-2], -(-y // 2), -(-x // 2)))
    return out


def _metadata(image: Image, shapes: list[tuple[int, ...]], version: str, name: str) -> tuple[dict[str, Any], list[str]]:
    """The group attributes and the axes' names."""
    ndim = len(shapes[0])
    names = {2: ["y", "x"], 3: ["z", "y", "x"], 4: ["t", "z", "y", "x"]}[ndim]
    voxel = dict(zip("zyx", image.voxel_size_um, strict=True))
    axes: list[dict[str, Any]] = []
    base: list[float] = []
    for n in names:
        if n == "t":
            axes.append({"name": "t", "type": "time"})
            base.append(1.0)
            continue
        axis: dict[str, Any] = {"name": n, "type": "space"}
        if voxel[n] is not None:
            axis["unit"] = "micrometer"
        axes.append(axis)
        base.append(float(voxel[n]) if voxel[n] is not None else 1.0)
    datasets = []
    for k, _ in enumerate(shapes):
        step = [1.0] * (ndim - 2) + [2.0**k, 2.0**k]
        transforms: list[dict[str, Any]] = [{"type": "scale", "scale": [round(b * s, 12) for b, s in zip(base, step, strict=True)]}]
        if k:  # a level-k pixel is the mean of 2^k x 2^k full-resolution pixels: its centre is offset
            transforms.append({"type": "translation", "translation": [round(b * (s - 1) / 2, 12) for b, s in zip(base, step, strict=True)]})
        datasets.append({"path": str(k), "coordinateTransformations": transforms})
    multiscale: dict[str, Any] = {"name": name, "axes": axes, "datasets": datasets}
    if len(shapes) > 1:
        multiscale["type"] = "mean of 2x2 blocks in Y and X"
    own = {"history": list(image.history), "origin": list(image.origin)}
    if version == "0.4":
        attrs = {"multiscales": [{"version": "0.4", **multiscale}], "eprjax": own}
    else:
        attrs = {"ome": {"version": "0.5", "multiscales": [multiscale]}, "eprjax": own}
    return attrs, names


def write_ome_zarr(
    folder: str | os.PathLike[str],
    image: Image,
    planes: Iterable[np.ndarray],
    *,
    dtype: np.dtype,
    version: str = DEFAULT_VERSION,
    pyramid: int = 0,
    name: str = "image",
) -> None:
    """Write ``image``'s ``planes`` (its (Y, X) planes in storage order, each of ``dtype``)
    as an OME-Zarr image into the new folder ``folder``: NGFF ``version``, the full
    resolution at path "0" and ``pyramid`` levels below it ("1", "2", ...). Holds a chunk's
    depth of planes at a time (per level), never the volume."""
    import zarr  # noqa: PLC0415

    if version not in VERSIONS:
        raise ParameterError(f"OME-Zarr version must be one of {', '.join(VERSIONS)}, got {version!r}")
    dtype = np.dtype(dtype)
    shapes = levels(tuple(image.shape), pyramid)
    attrs, names = _metadata(image, shapes, version, name)
    group = zarr.open_group(Path(folder), mode="w-", zarr_format=2 if version == "0.4" else 3)
    arrays = []
    for k, shape in enumerate(shapes):
        options: dict[str, Any] = {"shape": shape, "chunks": _chunks(shape, dtype.itemsize), "dtype": dtype, "fill_value": 0}
        if version == "0.4":
            options["chunk_key_encoding"] = {"name": "v2", "separator": "/"}
        else:
            options["dimension_names"] = names
        arrays.append(group.create_array(str(k), **options))
    group.attrs.update(attrs)
    writers = [_SlabWriter(a) for a in arrays]
    for plane in planes:
        for k, writer in enumerate(writers):
            if k:
                plane = _halve(plane)
            writer.add(plane)
    for writer in writers:
        writer.close()


class _SlabWriter:
    """Collects the planes of one array, a chunk's depth at a time, and writes each slab."""

    def __init__(self, array: Any) -> None:
        self.array = array
        self.shape = tuple(array.shape)
        self.depth = array.chunks[-3] if len(self.shape) >= 3 else 1
        self.planes: list[np.ndarray] = []
        self.index = iter(np.ndindex(*self.shape[:-2]) if len(self.shape) > 2 else [()])
        self.first: tuple[int, ...] | None = None

    def add(self, plane: np.ndarray) -> None:
        where = next(self.index)
        if self.first is None:
            self.first = where
        self.planes.append(np.asarray(plane).reshape(self.shape[-2:]))
        if len(self.planes) == self.depth or (len(self.shape) >= 3 and where[-1] == self.shape[-3] - 1):
            self._flush()

    def _flush(self) -> None:
        if not self.planes:
            return
        assert self.first is not None
        if len(self.shape) == 2:
            self.array[...] = self.planes[0]
        else:
            *lead, z = self.first
            self.array[(*lead, slice(z, z + len(self.planes)))] = np.stack(self.planes)
        self.planes, self.first = [], None

    def close(self) -> None:
        self._flush()
        if next(self.index, None) is not None:
            raise FileFormatError("fewer planes than the image holds")


def iter_files(folder: Path) -> Iterator[Path]:
    """Every file under ``folder``."""
    for root, _, files in os.walk(folder):
        for f in files:
            yield Path(root) / f
