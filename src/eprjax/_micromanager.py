"""Micro-Manager acquisitions: found in a folder, split into one stack per position and channel.

Micro-Manager saves an acquisition in one of two ways (micro-manager.org, "Micro-Manager File
Formats" and "Files and Metadata"):

- image stack files: ``<prefix>_MMStack_<position>.ome.tif``, one per XY position, continued in
  ``<prefix>_MMStack_<position>_1.ome.tif`` and so on past 4 GB; OME-TIFF, with Micro-Manager's
  own summary and index map in the real thing;
- separate image files: a folder (per position, e.g. ``Pos0``) of single-plane TIFFs with a
  ``metadata.txt`` (JSON: a "Summary" with ``PixelSize_um``, ``z-step_um``, ``ChNames``, ...,
  and one entry per plane), named ``img_<time:9>_<channel>_<z:3>.tif`` (1.4) or
  ``img_channel<c>_position<p>_time<t>_z<z>.tif`` (2.0).

Each (position, channel) becomes one `Acquisition`: a (T, Z, Y, X) stack with its voxel size.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np

from ._errors import EprjaxError, FileFormatError, MissingFileError
from ._image import Image, VoxelSize
from ._tiff import _child, _merge, _ome_image, _ome_voxel, _um, open_tiff

_MMSTACK = re.compile(r"^(?P<prefix>.*)_MMStack(?P<rest>.*?)\.(?:ome\.)?tiff?$", re.IGNORECASE)
_CONTINUATION = re.compile(r"^(?P<stem>.+)_(?P<n>\d+)(?P<ext>\.(?:ome\.)?tiff?)$", re.IGNORECASE)
_SEQ_20 = re.compile(
    r"^img_channel(?P<c>\d+)_position(?P<p>\d+)_time(?P<t>\d+)_z(?P<z>\d+)\.tiff?$", re.IGNORECASE
)
_SEQ_14 = re.compile(r"^img_(?P<t>\d+)_(?P<name>.+)_(?P<z>\d+)\.tiff?$", re.IGNORECASE)


@dataclasses.dataclass(frozen=True)
class Acquisition:
    """One position and one channel of a Micro-Manager acquisition: a (T, Z, Y, X) stack.

    Attributes:
        name: the acquisition's name (Micro-Manager's prefix).
        position: the XY position's label (``Pos0`` when there is one position).
        channel: the channel's name.
        source: the file or folder the pixels come from.
        shape: (T, Z, Y, X).
        dtype: the pixels' type as acquired.
        voxel_size_um: (z, y, x) in micrometres; None where the metadata do not say.
    """

    name: str
    position: str
    channel: str
    source: Path
    shape: tuple[int, int, int, int]
    dtype: np.dtype
    voxel_size_um: VoxelSize
    _load: Callable[[], np.ndarray] = dataclasses.field(repr=False, compare=False)

    @property
    def output_name(self) -> str:
        """``<name>_<position>_<channel>``; within each part anything but letters, digits,
        ``.``, ``+`` and ``-`` becomes ``-``, so that ``_`` only separates the parts."""
        return "_".join(_safe(part) for part in (self.name, self.position, self.channel))

    def read(self) -> Image:
        """Load the pixels: (T, Z, Y, X), or (Z, Y, X) when there is one time point."""
        data = self._load()
        if data.shape[0] == 1:
            data = data[0]
        return Image(data, voxel_size_um=self.voxel_size_um)


def _safe(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9.+-]+", "-", text).strip("-.") or "x"


# -- image stack files ----------------------------------------------------------------------


def _is_continuation(path: Path) -> bool:
    match = _CONTINUATION.match(path.name)
    return bool(match) and (path.parent / (match["stem"] + match["ext"])).exists()


def _channel_names(summary: dict[str, Any], count: int) -> list[str]:
    names = summary.get("ChNames")
    if isinstance(names, list) and len(names) >= count:
        return [str(n) for n in names[:count]]
    return [f"Channel{i}" for i in range(count)]


def _summary_voxel(summary: dict[str, Any]) -> VoxelSize:
    pixel = _um(summary.get("PixelSize_um"))
    return (_um(summary.get("z-step_um")), pixel, pixel)


def _axes_and_shape(series: Any) -> tuple[str, tuple[int, ...]]:
    """A series' axes and shape with its length-1 axes, where this tifffile gives them
    (get_axes / get_shape); releases without those give them squeezed, which serves as
    well here: an axis of length 1 changes no page index."""
    if hasattr(series, "get_axes"):
        return series.get_axes(False), tuple(series.get_shape(False))
    return str(series.axes), tuple(series.shape)


def _stacks(
    path: Path, index: int, axes: str, shape: tuple[int, ...]
) -> dict[tuple[int, int], tuple[tuple[int, int, int, int], Callable[[], np.ndarray]]]:
    """For each (position, channel) of series ``index`` of the file at ``path`` (unsqueezed
    ``axes`` and ``shape``; R is tifffile's letter for positions): its (T, Z, Y, X) shape and
    a loader that reads only its own planes."""
    sizes = dict(zip(axes, shape, strict=True))
    if sizes.get("S", 1) > 1:
        raise FileFormatError(f"{path}: RGB or multi-sample planes are not supported (axes {axes})")
    plane_axes = axes[: axes.index("Y")]
    extra = [a for a in plane_axes if a not in "TRZC" and sizes[a] > 1]
    if extra or axes[axes.index("Y") :].replace("S", "") != "YX":
        raise FileFormatError(f"{path}: unsupported axes {axes}")
    plane_shape = tuple(sizes[a] for a in plane_axes)
    kept = [a for a in plane_axes if a in "TZ"]
    tzyx = (sizes.get("T", 1), sizes.get("Z", 1), sizes["Y"], sizes["X"])

    def loader(r: int, c: int) -> Callable[[], np.ndarray]:
        def load() -> np.ndarray:
            grids = np.meshgrid(
                *(np.arange(n) if a in "TZ" else np.array([r if a == "R" else c if a == "C" else 0])
                  for a, n in zip(plane_axes, plane_shape, strict=True)),
                indexing="ij",
            )
            pages = np.ravel_multi_index([g.ravel() for g in grids], plane_shape).tolist() if plane_axes else [0]
            with open_tiff(path) as tif:
                data = tif.asarray(key=pages, series=index)
            data = data.reshape(*(sizes[a] for a in kept), sizes["Y"], sizes["X"])
            order = kept + ["Y", "X"]
            for a in "TZ":
                if a not in order:
                    data, order = data[np.newaxis], [a, *order]
            return np.transpose(data, [order.index(a) for a in "TZYX"])

        return load

    return {
        (r, c): (tzyx, loader(r, c)) for r in range(sizes.get("R", 1)) for c in range(sizes.get("C", 1))
    }


def _mmstack(files: list[Path], continuations: list[Path]) -> list[Acquisition]:
    """The acquisitions in one group of stack files (one prefix, one folder); the
    continuation files must be part of the series the main files describe."""
    out: list[Acquisition] = []
    covered: set[str] = set()
    prefix = _MMSTACK.match(files[0].name)["prefix"]  # type: ignore[index]
    for path in files:
        with open_tiff(path) as tif:
            if tif.is_mmstack:
                # Micro-Manager's own index map: tifffile reads all files of this prefix as
                # one series with the positions as axis R.
                summary = (tif.micromanager_metadata or {}).get("Summary") or {}
                series = tif.series[0]
                axes, shape = _axes_and_shape(series)
                sizes = dict(zip(axes, shape, strict=True))
                channels = _channel_names(summary, sizes.get("C", 1))
                labels = _position_labels(summary, sizes.get("R", 1))
                ome = _ome_image(tif, 0) if tif.is_ome else None
                voxel = _merge(_summary_voxel(summary), _ome_voxel(ome))
                for (r, c), (tzyx, load) in _stacks(path, 0, axes, shape).items():
                    out.append(Acquisition(prefix, labels[r], channels[c], path, tzyx, np.dtype(series.dtype), voxel, load))
                return out  # the other files of the group are in this series
            for index, series in enumerate(tif.series):
                if series.pages[0] is None or series.pages[0].parent.filehandle.path != tif.filehandle.path:
                    continue  # a series whose pixels live in another file of the group
                covered.update(p.parent.filehandle.path for p in series.pages if p is not None)
                axes, shape = _axes_and_shape(series)
                sizes = dict(zip(axes, shape, strict=True))
                ome = _ome_image(tif, index) if tif.is_ome else None
                channels = _ome_channel_names(ome, sizes.get("C", 1))
                label = _ome_position_label(ome, path, prefix, index, len(tif.series))
                for (r, c), (tzyx, load) in _stacks(path, index, axes, shape).items():
                    position = label if sizes.get("R", 1) == 1 else f"{label}-{r}"
                    out.append(Acquisition(prefix, position, channels[c], path, tzyx, np.dtype(series.dtype), _ome_voxel(ome), load))
    for extra in continuations:
        if os.fspath(extra.resolve()) not in {os.fspath(Path(c).resolve()) for c in covered}:
            raise FileFormatError(
                f"{extra}: looks like a continuation of a stack, but no stack's metadata refers to it"
            )
    return out


def _position_labels(summary: dict[str, Any], count: int) -> list[str]:
    for key in ("StagePositions", "InitialPositionList"):
        positions = summary.get(key)
        if isinstance(positions, list) and len(positions) >= count:
            labels = [p.get("Label") if isinstance(p, dict) else None for p in positions[:count]]
            if all(isinstance(label, str) and label for label in labels):
                return labels  # type: ignore[return-value]
    return [f"Pos{i}" for i in range(count)]


def _ome_channel_names(ome: Any, count: int) -> list[str]:
    names: list[str] = []
    pixels = None if ome is None else _child(ome, "Pixels")
    if pixels is not None:
        names = [ch.attrib.get("Name", "") for ch in pixels if ch.tag.rsplit("}", 1)[-1] == "Channel"]
    if len(names) == count and all(names):
        return names
    return [f"Channel{i}" for i in range(count)]


def _ome_position_label(ome: Any, path: Path, prefix: str, index: int, count: int) -> str:
    """A stack file's position: from its name when it holds one position (``..._Pos3``),
    else from each OME image's name, else ``Pos<index>``."""
    rest = _MMSTACK.match(path.name)["rest"].strip("_")  # type: ignore[index]
    if count == 1 and rest:
        return rest
    name = None if ome is None else ome.attrib.get("Name")
    if name and not name.startswith(prefix) and not re.fullmatch(r"Image\d*", name):
        return name
    return f"Pos{index}"


# -- separate image files -------------------------------------------------------------------


def _load_json(path: Path) -> dict[str, Any]:
    text = path.read_text(encoding="utf-8", errors="replace")
    try:
        value = json.loads(text)
    except ValueError:
        # Micro-Manager 1.4 sometimes leaves a comma before a closing brace
        try:
            value = json.loads(re.sub(r",\s*([}\]])", r"\1", text))
        except ValueError as e:
            raise FileFormatError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(value, dict):
        raise FileFormatError(f"{path}: expected a JSON object")
    return value


def _sequence(folder: Path) -> list[Acquisition]:
    """The acquisitions in one folder of single-plane TIFFs with a metadata.txt."""
    meta = _load_json(folder / "metadata.txt")
    summary = meta.get("Summary") if isinstance(meta.get("Summary"), dict) else {}
    names = summary.get("ChNames") if isinstance(summary.get("ChNames"), list) else []
    planes: dict[tuple[int, str, int], Path] = {}  # (t, channel, z)
    for path in sorted(folder.iterdir()):
        if path.suffix.lower() not in (".tif", ".tiff") or not path.is_file():
            continue
        m20, m14 = _SEQ_20.match(path.name), _SEQ_14.match(path.name)
        if m20:
            c = int(m20["c"])
            channel = str(names[c]) if c < len(names) else f"Channel{c}"
            planes[(int(m20["t"]), channel, int(m20["z"]))] = path
        elif m14:
            planes[(int(m14["t"]), m14["name"], int(m14["z"]))] = path
    if not planes:
        return []
    channels = sorted({c for _, c, _ in planes}, key=lambda c: (names.index(c) if c in names else len(names), c))
    times = sorted({t for t, _, _ in planes})
    slices = sorted({z for _, _, z in planes})
    complete = [t for t in times if all((t, c, z) in planes for c in channels for z in slices)]
    # a stopped acquisition ends with an incomplete time point: keep the complete ones
    if not complete or complete != times[: len(complete)]:
        missing = next((t, c, z) for t in times for c in channels for z in slices if (t, c, z) not in planes)
        raise FileFormatError(
            f"{folder}: plane missing: time {missing[0]}, channel {missing[1]}, z {missing[2]}"
        )
    first = next(iter(planes.values()))
    with open_tiff(first) as tif:
        page = tif.pages.first
        if len(page.shape) != 2:
            raise FileFormatError(f"{first}: expected single-plane grayscale images")
        (ny, nx), dtype = page.shape, np.dtype(page.dtype)
    voxel = _merge(_summary_voxel(summary), _frame_voxel(meta))
    prefix = summary.get("Prefix")
    acquisition, position = _names(folder, prefix if isinstance(prefix, str) and prefix else None)
    out = []
    for channel in channels:

        def load(channel: str = channel) -> np.ndarray:
            stack = np.empty((len(complete), len(slices), ny, nx), dtype)
            for i, t in enumerate(complete):
                for j, z in enumerate(slices):
                    with open_tiff(planes[(t, channel, z)]) as tif:
                        plane = tif.asarray()
                    if plane.shape != (ny, nx):
                        raise FileFormatError(
                            f"{planes[(t, channel, z)]}: plane of shape {plane.shape}, expected {(ny, nx)}"
                        )
                    stack[i, j] = plane
            return stack

        shape = (len(complete), len(slices), ny, nx)
        out.append(Acquisition(acquisition, position, channel, folder, shape, dtype, voxel, load))
    return out


def _frame_voxel(meta: dict[str, Any]) -> VoxelSize:
    """Pixel size and z step from the per-plane entries, where the summary lacks them."""
    pixel, zs = None, {}
    for key, value in meta.items():
        if key == "Summary" or not isinstance(value, dict):
            continue
        pixel = pixel or _um(value.get("PixelSizeUm"))
        z_index = value.get("SliceIndex", value.get("ZIndex"))
        z_um = value.get("ZPositionUm")
        if isinstance(z_index, int) and isinstance(z_um, (int, float)) and math.isfinite(z_um):
            zs.setdefault(z_index, float(z_um))
    step = None
    if len(zs) > 1:
        ordered = [zs[k] for k in sorted(zs)]
        step = _um(abs(ordered[-1] - ordered[0]) / (len(ordered) - 1))
    return (step, pixel, pixel)


def _names(folder: Path, prefix: str | None) -> tuple[str, str]:
    """(acquisition, position) for a folder of planes: ``Acq/Pos0`` or ``Acq`` itself."""
    if prefix:
        is_position = folder.name != prefix
    else:
        siblings = sum(1 for _ in folder.parent.glob("*/metadata.txt"))
        is_position = bool(re.match(r"^(Pos\d|Default$)", folder.name)) or siblings > 1
    if not is_position:
        return prefix or folder.name, "Pos0"
    return prefix or folder.parent.name, "Pos0" if folder.name == "Default" else folder.name


# -- finding them ---------------------------------------------------------------------------


def find_acquisitions(directory: str | os.PathLike[str]) -> list[Acquisition]:
    """Every Micro-Manager acquisition under ``directory`` (searched recursively), one
    `Acquisition` per position and channel, in a stable order; nothing is loaded yet.

    ``directory`` may also be one ``*_MMStack_*.ome.tif`` file.
    """
    root = Path(directory)
    if not root.exists():
        raise MissingFileError(f"{root}: no such directory")
    stacks: dict[tuple[Path, str], tuple[list[Path], list[Path]]] = {}
    folders: list[Path] = []
    candidates: Iterable[Path] = [root] if root.is_file() else sorted(root.rglob("*"))
    for path in candidates:
        match = _MMSTACK.match(path.name)
        if match and path.is_file():
            main, continued = stacks.setdefault((path.parent, match["prefix"]), ([], []))
            (continued if _is_continuation(path) else main).append(path)
        elif path.name == "metadata.txt" and path.is_file():
            folders.append(path.parent)
    out: list[Acquisition] = []
    for (_, _), (files, continuations) in sorted(stacks.items()):
        if not files:
            continue
        try:
            out.extend(_mmstack(sorted(files), continuations))
        except EprjaxError:
            raise
        except Exception as e:
            raise FileFormatError(f"{files[0]}: cannot read as a Micro-Manager stack ({type(e).__name__}: {e})") from None
    for folder in folders:
        try:
            out.extend(_sequence(folder))
        except EprjaxError:
            raise
        except Exception as e:
            raise FileFormatError(f"{folder}: cannot read as Micro-Manager image files ({type(e).__name__}: {e})") from None
    return out
