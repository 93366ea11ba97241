"""`read` and `write`: one entry point for every file format, chosen by the file's name."""

from __future__ import annotations

import contextlib
import glob
import math
import mmap
import os
import secrets
import shutil
import socket
import threading
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np

from ._errors import EprjaxError, FileFormatError, MissingFileError, ParameterError
from ._i2i import PIXEL_TYPES, pixel_type_for, read_i2i, write_i2i
from ._image import Image, as_image
from ._omezarr import DEFAULT_VERSION, LazyArray, is_ome_zarr, iter_files, levels, read_ome_zarr, write_ome_zarr
from ._tiff import read_tiff, write_tiff

Format = Literal["i2i", "tiff", "ome-tiff", "ome-zarr"]
Int16Mode = Literal["auto", "clip", "scale", "halve"]

INT16_MODES = ("auto", "clip", "scale", "halve")

# Names with these endings are images in formats eprjax does not read; anything else without
# a TIFF or i2i ending is an i2i name given without ".i2i", as the original programs allow.
_OTHER_IMAGE_SUFFIXES = {
    ".png", ".jpg", ".jpeg", ".gif", ".bmp", ".czi", ".nd2", ".lif", ".lsm", ".oib", ".oif",
    ".ims", ".dv", ".r3d", ".mrc", ".n5", ".h5", ".hdf5", ".npy", ".npz", ".nrrd",
    ".nii", ".ics", ".ids", ".vsi", ".svs", ".stk", ".btf", ".tf8", ".ome", ".xml", ".txt",
}


def file_format(path: str | os.PathLike[str]) -> tuple[Path, Format]:
    """The file's path (``.i2i`` appended to a name without an image ending, as the original
    programs did: ``mycell_`` is ``mycell_.i2i``) and its format."""
    p = Path(path)
    if p.name in ("", ".", "..") or str(path).endswith(os.sep):
        raise ParameterError(f"{str(path)!r}: not a file name (give an image file, e.g. cell.i2i)")
    lower = p.name.lower()
    if lower.endswith((".ome.tif", ".ome.tiff")):
        return p, "ome-tiff"
    if lower.endswith(".zarr"):
        return p, "ome-zarr"
    suffix = p.suffix.lower()
    if suffix in (".tif", ".tiff"):
        return p, "tiff"
    if suffix == ".i2i":
        return p, "i2i"
    if suffix in _OTHER_IMAGE_SUFFIXES:
        raise ParameterError(
            f"{p}: unsupported file type {p.suffix!r}; eprjax reads and writes .i2i, .tif, .tiff, .ome.tif and .ome.zarr"
        )
    return p.with_name(p.name + ".i2i"), "i2i"


def input_path(path: str | os.PathLike[str]) -> tuple[Path, Format]:
    """Where an input named ``path`` is: as `file_format` says, or, for an i2i name given
    without ``.i2i`` and absent, the name itself if that file exists."""
    p, fmt = file_format(path)
    if not p.exists() and fmt == "i2i" and p != Path(path) and Path(path).is_file():
        p = Path(path)
    if not p.exists():
        raise MissingFileError(f"{p}: no such file")
    if fmt == "ome-zarr":
        if not p.is_dir():
            raise FileFormatError(f"{p}: not a folder; an OME-Zarr image is a folder")
        return p, fmt
    if p.is_dir():
        raise FileFormatError(f"{p}: is a directory, not an image file")
    if not p.is_file():  # a FIFO, a socket or a device: opening it could block for ever
        raise FileFormatError(f"{p}: not a regular file (a pipe or a device?); eprjax reads image files")
    return p, fmt


def read(path: str | os.PathLike[str], *, channel: int | None = None) -> Image:
    """Read an image file: i2i, TIFF, ImageJ hyperstack, OME-TIFF or OME-Zarr, chosen by its name.

    Args:
        path: the file; a name without an image ending means i2i (``mycell_`` is
            ``mycell_.i2i``).
        channel: for a multi-channel TIFF or OME-Zarr, the channel to read (from 0).

    Returns:
        An `Image`: the pixels as stored (memory-mapped and read-only when the file allows;
        from an OME-Zarr, its full resolution as a lazy array read chunk by chunk when sliced),
        axes (Y, X), (Z, Y, X) or (T, Z, Y, X), with the voxel size in um, the history and
        the origin. i2i files always give (Z, Y, X) or, with several volumes, (T, Z, Y, X).

    Raises:
        MissingFileError: the file does not exist.
        FileFormatError: the file is not a well-formed file of its format.

    Example:
        >>> img = eprjax.read("mycell_")           # mycell_.i2i
        >>> img.shape, img.voxel_size_um
        ((64, 256, 256), (0.25, 0.187, 0.187))
    """
    p, fmt = input_path(path)
    try:
        if fmt == "i2i":
            if channel not in (None, 0):
                raise ParameterError(f"{p}: i2i files have one channel; got channel={channel}")
            return read_i2i(p, name=str(p))
        if fmt == "ome-zarr":
            return read_ome_zarr(p, name=str(p), channel=channel)
        return read_tiff(p, name=str(p), channel=channel)
    except PermissionError:
        raise FileFormatError(f"{p}: permission denied") from None
    except OSError as e:
        raise FileFormatError(f"{p}: cannot read ({e.strerror or e})") from None


def _to_numpy(data: Any) -> np.ndarray:
    if isinstance(data, np.ndarray):
        return data
    try:
        return np.asarray(data)
    except Exception:
        return np.from_dlpack(data)


def _plane_indices(shape: Sequence[int]) -> Iterator[tuple[int, ...]]:
    return np.ndindex(*shape[:-2]) if len(shape) > 2 else iter([()])


def file_backing(data: Any) -> tuple[str, int, np.dtype, tuple[int, ...]] | None:
    """(file name, offset, dtype, shape) when ``data`` is a whole memory-mapped file region
    (not a view of one), else None."""
    if (
        isinstance(data, np.memmap)
        and isinstance(data.base, mmap.mmap)
        and data.filename is not None
        and data.flags.c_contiguous
    ):
        return str(data.filename), int(data.offset), data.dtype, tuple(data.shape)
    return None


def _planes(data: np.ndarray, transform: Callable[[np.ndarray], np.ndarray]) -> Iterator[np.ndarray]:
    """The (Y, X) planes of ``data`` in storage order, each transformed; a plane at a time, so
    that a memory-mapped array never needs to fit in memory (a whole memory-mapped file is
    read plane by plane from the file, so that the planes read do not stay mapped)."""
    backing = file_backing(data) if data.ndim >= 2 else None
    if isinstance(data, LazyArray) and data.ndim >= 3:  # chunked: a chunk's depth at a time, each chunk read once
        depth = data.chunks[-3]
        for lead in np.ndindex(*data.shape[:-3]):
            for z in range(0, data.shape[-3], depth):
                for plane in data[(*lead, slice(z, z + depth))]:
                    yield transform(plane)
        return
    if backing is None:
        for index in _plane_indices(data.shape):
            yield transform(np.asarray(data[index]))
        return
    name, offset, dtype, shape = backing
    count = shape[-2] * shape[-1]
    with open(name, "rb") as f:
        f.seek(offset)
        for _ in _plane_indices(shape):
            plane = np.fromfile(f, dtype=dtype, count=count)
            if plane.size != count:
                raise FileFormatError(f"{name}: the file ends early")
            yield transform(plane.reshape(shape[-2:]))


def _range(data: np.ndarray) -> tuple[float, float, bool]:
    """Minimum, maximum and whether there is a NaN, a plane at a time."""
    lo, hi, nan = math.inf, -math.inf, False
    for plane in _planes(data, lambda p: p):
        if plane.dtype.kind == "f":
            isnan = np.isnan(plane)
            nan = nan or bool(isnan.any())
            plane = plane[~isnan]
        if plane.size:
            lo, hi = min(lo, float(plane.min())), max(hi, float(plane.max()))
    return lo, hi, nan


def int16_conversion(
    data: np.ndarray, mode: Int16Mode
) -> tuple[Callable[[np.ndarray], np.ndarray], str | None]:
    """How to bring ``data`` to int16 in ``mode``, and the history line that records it.

    - ``"clip"``: round to the nearest integer and clip to -32768..32767; the line counts
      the clipped voxels.
    - ``"scale"``: multiply by 32767 / max|value| and round; the line gives the factor.
    - ``"halve"``: integers only: v // 2 (the original mmtoi2i's treatment of uint16),
      then clipped.
    - ``"auto"``: int16 as is; int8 and uint8 exactly; uint16 halved; anything else clipped.

    NaN, infinities and complex values cannot become int16 and raise `ParameterError`.
    """
    if mode not in INT16_MODES:
        raise ParameterError(f"int16 must be one of {', '.join(INT16_MODES)}, got {mode!r}")
    dtype = np.dtype(data.dtype)
    if dtype.kind == "c":
        raise ParameterError("complex data cannot be written as int16")
    if mode == "auto":
        if dtype == np.int16:
            return (lambda p: p), None
        if dtype in (np.dtype(np.int8), np.dtype(np.uint8), np.dtype(np.bool_)):
            return (lambda p: p.astype(np.int16)), None
        mode = "halve" if dtype == np.uint16 else "clip"
    lo, hi, nan = _range(data)
    if nan or (dtype.kind == "f" and not (math.isfinite(lo) and math.isfinite(hi))):
        raise ParameterError("the data hold NaN or infinite values, which int16 cannot represent")
    if mode == "halve":
        if dtype.kind not in "biu":
            raise ParameterError(f"int16='halve' needs integer data, got {dtype}")
        clipped = int(hi // 2 > 32767) or int(lo // 2 < -32768)
        return (
            lambda p: np.clip(p.astype(np.int64) // 2, -32768, 32767).astype(np.int16),
            "int16: values halved (v // 2)" + (", then clipped to -32768..32767" if clipped else ""),
        )
    if mode == "scale":
        peak = max(abs(lo), abs(hi))
        factor = 32767.0 / peak if peak > 0 else 1.0
        return (
            lambda p: np.clip(np.rint(p.astype(np.float64) * factor), -32768, 32767).astype(np.int16),
            f"int16: values multiplied by {factor:.9g} and rounded",
        )
    count = 0
    for plane in _planes(data, lambda p: p):
        r = np.rint(plane.astype(np.float64))
        count += int(np.count_nonzero((r < -32768) | (r > 32767)))
    return (
        lambda p: np.clip(np.rint(p.astype(np.float64)), -32768, 32767).astype(np.int16),
        f"int16: values rounded, {count} of {data.size} clipped to -32768..32767",
    )


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike[str], *, folder: bool = False) -> Iterator[Path]:
    """A temporary path beside ``path``, renamed onto it when the block ends without an
    error and removed when it does not: ``path`` is written whole or not at all.

    ``folder``: the output is a folder (an OME-Zarr image), which the block creates at the
    temporary path; an OME-Zarr image already at ``path`` is replaced, any other folder
    refused."""
    target = Path(path)
    if folder:
        if target.is_dir() and not is_ome_zarr(target):
            raise ParameterError(f"{target}: a folder that is not an OME-Zarr image is there; eprjax replaces only OME-Zarr images")
        if target.exists() and not target.is_dir():
            raise ParameterError(f"{target}: exists and is not a folder; an OME-Zarr image is a folder")
    elif target.is_dir():
        raise ParameterError(f"{target}: is a directory; give a file name")
    parent = target.parent
    if not parent.is_dir():
        raise ParameterError(f"{target}: the directory {parent} does not exist")
    _remove_abandoned(parent, target.name)
    tmp = _temporary(target)
    _PARTIAL.add(tmp)
    try:
        yield tmp
        for written in iter_files(tmp) if folder else [tmp]:
            with open(written, "rb+") as f:
                os.fsync(f.fileno())
        if CANCEL.is_set() or any(heard() for heard in STOPPING):
            raise KeyboardInterrupt  # the program is stopping: the output is abandoned, not put in place
        if folder and target.is_dir():  # a folder cannot be renamed onto another: the old one is moved aside first
            old = _temporary(target)  # (not removed by a sudden stop: a later write clears it)
            os.replace(target, old)
            os.replace(tmp, target)
            _remove(old)
        else:
            os.replace(tmp, target)
    except BaseException:
        _remove(tmp)
        raise
    finally:
        _PARTIAL.discard(tmp)


def _stem(target: Path) -> str:
    """``cell`` for ``cell.ome.zarr``."""
    name = target.name
    for ending in (".ome.zarr", ".zarr"):
        if name.lower().endswith(ending):
            name = name[: -len(ending)]
            break
    return name or "image"


def _temporary(target: Path) -> Path:
    """A hidden name beside ``target`` that says which host and process it belongs to."""
    return target.parent / f".{target.name}.{_HOST}.{os.getpid()}.{secrets.token_hex(4)}.part"


def _remove(path: Path) -> bool:
    """Remove a file or a folder; whether there was one."""
    try:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink()
    except OSError:
        return False
    return True


_PARTIAL: set[Path] = set()  # the temporary files of outputs being written
CANCEL = threading.Event()  # set by a program that is stopping (Ctrl-C): no output is put in place after it
STOPPING: list[Callable[[], bool]] = []  # whether a stop was asked for that CANCEL may not show yet (a signal still on its way to the main thread)
_HOST = "".join(c if c.isalnum() or c in "-_" else "_" for c in socket.gethostname()) or "host"


def _remove_abandoned(folder: Path, name: str) -> None:
    """Remove the temporary files that runs on this host, now dead (killed while writing
    ``name``), left in ``folder``; those of live processes and other hosts are left alone."""
    prefix = f".{name}.{_HOST}."
    with contextlib.suppress(OSError):
        for tmp in folder.glob(f".{glob.escape(name)}.*.part"):
            pid = tmp.name[len(prefix) :].split(".")[0] if tmp.name.startswith(prefix) else ""
            if pid.isdigit() and int(pid) != os.getpid() and not _alive(int(pid)):
                _remove(tmp)


def _alive(pid: int) -> bool:
    """Whether process ``pid`` runs on this host."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_partial_outputs() -> int:
    """Remove the temporary files of every output still being written (for a process that
    must end at once, its writing thread cut off); how many there were."""
    count = 0
    for tmp in list(_PARTIAL):
        count += _remove(tmp)
        _PARTIAL.discard(tmp)
    return count


def write(
    path: str | os.PathLike[str],
    image: Any,
    *,
    voxel_size_um: Sequence[float | None] | None = None,
    history: Sequence[str] | None = None,
    origin: tuple[int, int] | None = None,
    int16: Int16Mode | None = None,
    byteorder: Literal[">", "<"] = ">",
    ngff: str = DEFAULT_VERSION,
    pyramid: int = 0,
) -> Path:
    """Write an image, in the format its name asks for, whole or not at all.

    Args:
        path: the file to write: ``.i2i`` (or no image ending: ``.i2i`` is appended),
            ``.tif`` / ``.tiff`` (ImageJ hyperstack where ImageJ can hold the data, OME-XML
            otherwise), ``.ome.tif`` / ``.ome.tiff`` or ``.ome.zarr`` (a folder; an OME-Zarr
            image already there is replaced, any other folder refused).
        image: an `Image`, or an array (NumPy, JAX, anything NumPy can convert) with axes
            (Y, X), (Z, Y, X) or (T, Z, Y, X).
        voxel_size_um: replaces the image's voxel size (z, y, x), um, where given.
        history: replaces the image's history where given.
        origin: replaces the image's (y, x) origin where given.
        int16: None keeps the data type (i2i: int16 as type I, complex as type C, all other
            types as float32, type R); otherwise write int16, converted as
            `int16_conversion` describes, with a history line that records how.
        byteorder: for i2i, ``">"`` big-endian as BIG's own writer (default) or ``"<"``.
        ngff: for OME-Zarr, the NGFF version: ``"0.4"`` (default; Zarr format 2, read by
            Fiji and BigDataViewer) or ``"0.5"`` (Zarr format 3).
        pyramid: for OME-Zarr, how many levels of lower resolution to add for viewing, each
            half the one above in Y and X (2 x 2 means).

    Returns:
        The path written (with ``.i2i`` appended where the name had no image ending).

    The file is first written beside its target under a temporary name and renamed into
    place when complete, so a failure or Ctrl-C never leaves a partial file. An OME-Zarr
    image is written a chunk's depth of planes at a time.
    """
    if byteorder not in (">", "<"):
        raise ParameterError(f"byteorder must be '>' or '<', got {byteorder!r}")
    target, fmt = file_format(path)
    if fmt == "ome-zarr":
        if ngff not in ("0.4", "0.5"):
            raise ParameterError(f"ngff must be '0.4' or '0.5', got {ngff!r}")
    elif pyramid:
        raise ParameterError(f"{target}: a pyramid is written only into OME-Zarr (.ome.zarr)")
    img = as_image(image, voxel_size_um=voxel_size_um, history=history, origin=origin)
    data = img.data if isinstance(img.data, LazyArray) else _to_numpy(img.data)
    if fmt == "ome-zarr":
        levels(tuple(data.shape), pyramid)  # checked before anything is written
    if int16 is not None:
        transform, note = int16_conversion(data, int16)
        out_dtype = np.dtype(np.int16)
        if note:
            img = img.add_history(note)
    elif fmt == "i2i":
        out_dtype = PIXEL_TYPES[pixel_type_for(data.dtype)]
        transform = lambda p: p  # noqa: E731
    else:
        out_dtype = np.dtype(data.dtype)
        if out_dtype.kind not in "biufc":
            raise ParameterError(f"cannot write pixels of dtype {out_dtype}")
        out_dtype = out_dtype.newbyteorder("=")
        transform = lambda p: p  # noqa: E731
    planes = _planes(data, lambda p: np.asarray(transform(p), dtype=out_dtype))
    try:
        with atomic_output(target, folder=fmt == "ome-zarr") as tmp:
            if fmt == "ome-zarr":
                write_ome_zarr(tmp, img, planes, dtype=out_dtype, version=ngff, pyramid=pyramid, name=_stem(target))
            elif fmt == "i2i":
                with open(tmp, "wb") as f:
                    write_i2i(f, img, planes, pixel_type=pixel_type_for(out_dtype), byteorder=byteorder)
            else:
                write_tiff(tmp, img, planes, dtype=out_dtype, ome=fmt == "ome-tiff")
    except EprjaxError:
        raise
    except PermissionError:
        raise EprjaxError(f"{target}: permission denied") from None
    except OSError as e:
        raise EprjaxError(f"{target}: cannot write ({e.strerror or e})") from None
    return target
