"""TIFF, ImageJ hyperstack and OME-TIFF files, through tifffile, with their voxel sizes.

Voxel sizes are read from OME-XML (``PhysicalSize*`` and their units), ImageJ metadata
(``spacing``, ``unit`` and the resolution tags) or Micro-Manager's summary, in that order,
and written both as OME-XML (``.ome.tif``) and as ImageJ metadata (``.tif``, when ImageJ can
hold the dtype). eprjax's own metadata (history, origin) travels as a small JSON object in the
OME image description or the ImageJ ``Info`` property.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import struct
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from typing import Any

import numpy as np
import tifffile

from ._errors import EprjaxError, FileFormatError, ParameterError
from ._image import AXES, Image, VoxelSize

IMAGEJ_DTYPES = {np.dtype(t) for t in (np.uint8, np.uint16, np.int16, np.float32)}

# micrometres per unit, for the units OME and ImageJ files use
_UM_PER_UNIT = {
    "pm": 1e-6,
    "å": 1e-4,
    "angstrom": 1e-4,
    "nm": 1e-3,
    "nanometer": 1e-3,
    "um": 1.0,
    "µm": 1.0,
    "μm": 1.0,
    "\\u00b5m": 1.0,
    "micron": 1.0,
    "microns": 1.0,
    "micrometer": 1.0,
    "micrometre": 1.0,
    "mm": 1e3,
    "millimeter": 1e3,
    "cm": 1e4,
    "centimeter": 1e4,
    "m": 1e6,
    "meter": 1e6,
    "inch": 25400.0,
}

_MAX_IN_MEMORY_FACTOR = 8  # a series that is not memory-mapped may decode to at most this x RAM


@contextlib.contextmanager
def _quiet_tifffile() -> Iterator[None]:
    """tifffile logs its complaints about odd files as warnings; eprjax reports what matters
    itself, so they are shown only when eprjax's own log is at debug level."""
    logger = logging.getLogger("tifffile")
    previous = logger.level
    if not logging.getLogger("eprjax").isEnabledFor(logging.DEBUG):
        logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        logger.setLevel(previous)


def _um(value: Any, unit: str | None = "µm") -> float | None:
    try:
        v = float(value)
    except (TypeError, ValueError):
        return None
    scale = _UM_PER_UNIT.get((unit or "µm").strip().lower())
    if scale is None or not math.isfinite(v) or v <= 0:
        return None
    return v * scale


def _ome_image(tif: tifffile.TiffFile, index: int) -> ET.Element | None:
    try:
        root = ET.fromstring(tif.ome_metadata or "")
    except ET.ParseError:
        return None
    images = [el for el in root if el.tag.rsplit("}", 1)[-1] == "Image"]
    return images[index] if index < len(images) else None


def _child(element: ET.Element, tag: str) -> ET.Element | None:
    for child in element:
        if child.tag.rsplit("}", 1)[-1] == tag:
            return child
    return None


def _ome_voxel(image: ET.Element | None) -> VoxelSize:
    pixels = None if image is None else _child(image, "Pixels")
    if pixels is None:
        return (None, None, None)
    a = pixels.attrib
    return tuple(  # type: ignore[return-value]
        _um(a.get(f"PhysicalSize{ax}"), a.get(f"PhysicalSize{ax}Unit", "µm")) for ax in "ZYX"
    )


def _imagej_voxel(tif: tifffile.TiffFile) -> VoxelSize:
    meta = tif.imagej_metadata or {}
    unit = meta.get("unit")
    if not unit or str(unit).lower() in ("pixel", "pixels"):
        return (None, None, None)
    unit = str(unit)
    z = _um(meta.get("spacing"), unit)
    y = x = None
    tags = tif.pages.first.tags
    for key, axis in (("XResolution", "x"), ("YResolution", "y")):
        tag = tags.get(key)
        if tag is None:
            continue
        num, den = tag.value
        if num > 0 and den > 0:
            size = _um(den / num, unit)
            x, y = (size, y) if axis == "x" else (x, size)
    return (z, y, x)


def _micromanager_voxel(tif: tifffile.TiffFile) -> VoxelSize:
    summary = (tif.micromanager_metadata or {}).get("Summary") or {}
    return (_um(summary.get("z-step_um")), _um(summary.get("PixelSize_um")), _um(summary.get("PixelSize_um")))


def _merge(*candidates: VoxelSize) -> VoxelSize:
    """Per axis, the first known value."""
    return tuple(  # type: ignore[return-value]
        next((c[i] for c in candidates if c[i] is not None), None) for i in range(3)
    )


def _own_metadata(text: str | None) -> dict[str, Any]:
    if not text:
        return {}
    try:
        value = json.loads(text)
    except (ValueError, TypeError):
        return {}
    own = value.get("eprjax") if isinstance(value, dict) else None
    return own if isinstance(own, dict) else {}


def _arrange(data: Any, axes: str, name: str, channel: int | None) -> Any:
    """Bring a series with tifffile's axes to (Y, X), (Z, Y, X) or (T, Z, Y, X)."""
    if axes.endswith("YXS"):  # interleaved samples (RGB): a channel axis like any other
        data, axes = np.moveaxis(data, -1, -3), axes[:-3] + "SYX"
    if not axes.endswith("YX"):
        raise FileFormatError(f"{name}: the image's axes are {axes}; expected the last two to be Y and X")
    counts = {ax: axes.count(ax) for ax in axes}
    if any(n > 1 for n in counts.values()):
        raise FileFormatError(f"{name}: unsupported axes {axes}")
    channel_axes = [ax for ax in axes[:-2] if ax in "CS"]
    if len(channel_axes) > 1:
        raise FileFormatError(f"{name}: both channels and samples ({axes}); split them first")
    if channel_axes:
        ax = axes.index(channel_axes[0])
        n = data.shape[ax]
        if channel is None:
            raise FileFormatError(
                f"{name}: the image has {n} channels (axes {axes}); choose one (channel=0..{n - 1})"
            )
        if not 0 <= channel < n:
            raise ParameterError(f"{name}: channel {channel} does not exist; it has channels 0..{n - 1}")
        data = np.take(data, channel, axis=ax)
        axes = axes.replace(channel_axes[0], "")
    elif channel not in (None, 0):
        raise ParameterError(f"{name}: channel {channel} does not exist; the image has one channel")
    rest = axes[:-2]
    z_axis = "Z" if "Z" in rest else next((ax for ax in rest if ax in "IQ"), None)
    t_axis = "T" if "T" in rest else next((ax for ax in rest if ax in "IQ" and ax != z_axis), None)
    other = [ax for ax in rest if ax not in (z_axis, t_axis)]
    if other:
        raise FileFormatError(f"{name}: unsupported axes {axes} (cannot place {''.join(other)})")
    order = [rest.index(ax) for ax in (t_axis, z_axis) if ax is not None] + [len(rest), len(rest) + 1]
    data = np.transpose(data, order) if order != list(range(len(order))) else data
    if t_axis is not None and z_axis is None:
        data = data[:, None]  # a time series of planes: (T, 1, Y, X)
    return data


def _check_directories(path: str | os.PathLike[str], name: str) -> None:
    """Walk the chain of image file directories (IFDs) before tifffile does: a chain that
    loops back on itself, or points past the end of the file, would make it spin forever."""
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        head = f.read(16)
        order = {b"II": "<", b"MM": ">"}.get(head[:2])
        if order is None or len(head) < 8:
            raise FileFormatError(f"{name}: not a TIFF file (no TIFF header)")
        version = struct.unpack(order + "H", head[2:4])[0]
        if version == 42:
            count_fmt, entry, offset_fmt = "H", 12, "I"
            offset = struct.unpack(order + "I", head[4:8])[0]
        elif version == 43 and len(head) == 16:
            count_fmt, entry, offset_fmt = "Q", 20, "Q"
            offset = struct.unpack(order + "Q", head[8:16])[0]
        else:
            raise FileFormatError(f"{name}: not a TIFF file (version {version})")
        count_size, offset_size = struct.calcsize(count_fmt), struct.calcsize(offset_fmt)
        seen: set[int] = set()
        while offset:
            if offset in seen:
                raise FileFormatError(f"{name}: corrupt TIFF: its chain of images loops back on itself")
            seen.add(offset)
            if offset + count_size > size:
                raise FileFormatError(f"{name}: corrupt TIFF: an image directory lies beyond the end of the file")
            f.seek(offset)
            count = struct.unpack(order + count_fmt, f.read(count_size))[0]
            end = offset + count_size + count * entry
            if end + offset_size > size:
                raise FileFormatError(f"{name}: corrupt TIFF: an image directory runs past the end of the file")
            f.seek(end)
            offset = struct.unpack(order + offset_fmt, f.read(offset_size))[0]


@contextlib.contextmanager
def open_tiff(path: str | os.PathLike[str], name: str | None = None) -> Iterator[tifffile.TiffFile]:
    """tifffile's `TiffFile`, once the file's chain of directories is known to be sound."""
    _check_directories(path, name or os.fspath(path))
    with _quiet_tifffile(), tifffile.TiffFile(path) as tif:
        yield tif


def read_tiff(path: str | os.PathLike[str], *, name: str | None = None, channel: int | None = None) -> Image:
    """Read the first series of a TIFF / OME-TIFF / ImageJ file, memory-mapped when the
    pixels are stored uncompressed in one block."""
    name = name or os.fspath(path)
    try:
        with open_tiff(path, name) as tif:
            if not tif.series:
                raise FileFormatError(f"{name}: the TIFF file holds no image")
            series = tif.series[0]
            axes, shape, dtype = series.axes, tuple(series.shape), np.dtype(series.dtype)
            if dtype.kind not in "biufc" or not shape or any(n < 1 for n in shape):
                raise FileFormatError(f"{name}: unsupported TIFF pixels: dtype {dtype}, shape {shape}")
            ome = _ome_image(tif, 0) if tif.is_ome else None
            voxel = _merge(
                _ome_voxel(ome),
                _imagej_voxel(tif) if tif.is_imagej else (None, None, None),
                _micromanager_voxel(tif) if tif.is_micromanager else (None, None, None),
            )
            description = None
            if ome is not None and _child(ome, "Description") is not None:
                description = _child(ome, "Description").text  # type: ignore[union-attr]
            elif tif.is_imagej:
                description = (tif.imagej_metadata or {}).get("Info")
            own = _own_metadata(description)
            offset = series.dataoffset
            size = os.path.getsize(path)
            nbytes = int(np.prod(shape)) * dtype.itemsize
            one_file = all(page is None or page.parent is tif for page in series.pages)
            if offset is not None and offset + nbytes <= size and one_file:
                data = np.memmap(
                    path, dtype=dtype.newbyteorder(tif.byteorder), mode="r", offset=offset, shape=shape
                )
            else:
                limit = _MAX_IN_MEMORY_FACTOR * max(size, 1 << 20)
                if nbytes > limit and one_file:
                    raise FileFormatError(
                        f"{name}: the TIFF claims {nbytes} bytes of pixels in a {size}-byte file"
                    )
                data = series.asarray()
    except EprjaxError:
        raise
    except MemoryError:
        raise FileFormatError(f"{name}: the TIFF's pixels do not fit in memory") from None
    except Exception as e:  # tifffile raises many kinds on malformed files
        raise FileFormatError(f"{name}: not a readable TIFF file ({type(e).__name__}: {e})") from None
    data = _arrange(data, axes, name, channel)
    if data.ndim > 4:
        raise FileFormatError(f"{name}: {data.ndim} axes after arrangement ({axes}); at most 4 are supported")
    history = own.get("history", [])
    origin = own.get("origin", [0, 0])
    try:
        return Image(
            data,
            voxel_size_um=voxel,
            history=tuple(str(h) for h in history) if isinstance(history, list) else (),
            origin=tuple(origin) if isinstance(origin, list) and len(origin) == 2 else (0, 0),
        )
    except (ParameterError, TypeError, ValueError) as e:
        raise FileFormatError(f"{name}: unusable metadata ({e})") from None


def write_tiff(
    path: str | os.PathLike[str],
    image: Image,
    planes: Iterator[np.ndarray],
    *,
    dtype: np.dtype,
    ome: bool,
) -> None:
    """Write ``planes`` (the (Y, X) planes of ``image``, already of ``dtype``) as OME-TIFF
    (``ome=True``) or as an ImageJ hyperstack (falling back to OME-XML where ImageJ cannot
    hold the dtype)."""
    axes = AXES[image.ndim]
    z, y, x = image.voxel_size_um
    own = json.dumps({"eprjax": {"history": list(image.history), "origin": list(image.origin)}})
    common: dict[str, Any] = dict(shape=image.shape, dtype=dtype, photometric="minisblack")
    # ImageJ keeps one unit and X and Y resolution tags that are always both present: it
    # can hold the voxel size exactly when X and Y are both known, or nothing is.
    imagej_can = (x is None) == (y is None) and not (x is None and z is not None)
    if not ome and np.dtype(dtype) in IMAGEJ_DTYPES and imagej_can:
        metadata: dict[str, Any] = {"axes": axes, "Info": own}
        kwargs: dict[str, Any] = {"imagej": True, "metadata": metadata}
        if x is not None and y is not None:
            metadata["unit"] = "um"
            kwargs["resolution"] = (1.0 / x, 1.0 / y)
            if z is not None:
                metadata["spacing"] = z
        tifffile.imwrite(path, planes, **common, **kwargs)
        return
    metadata = {"axes": axes, "Description": own}
    for ax, value in zip("ZYX", (z, y, x), strict=True):
        if value is not None:
            metadata[f"PhysicalSize{ax}"] = value
            metadata[f"PhysicalSize{ax}Unit"] = "µm"
    tifffile.imwrite(path, planes, ome=True, metadata=metadata, **common)
