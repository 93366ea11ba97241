"""The i2i file format of the UMass Biomedical Imaging Group (BIG), read and written.

Layout (all offsets in bytes):

    0        pixel type: 'I' int16, 'R' float32, 'C' complex64 (pairs of float32)
    1        a space
    2-7      X size, ASCII decimal     (BIG's writer: "I %5d %5d %5d B")
    8-13     Y size
    14-19    Z size: all planes of all volumes
    20       'B' big-endian, 'L' little-endian: the order of the numbers that follow
    21, 23   minimum, maximum pixel value (int16)
    25, 27   x, y origin (int16)
    29       number of volumes T (int16); Z is a multiple of T
    31-63    spaces
    64-1023  15 history lines of 64 ASCII characters, padded with spaces
    1024-    pixels, X fastest, then Y, then Z (and the volumes one after another)

An int16 field holding 8224 (two ASCII spaces) is unset: T then means 1, the others 0.

What eprjax adds, in ways other readers ignore: the voxel size, which the header has no field
for, is kept as a history line (``VOXEL_PREFIX``); a history entry longer than 64 characters
continues on the next lines, which begin with two spaces (the entry was broken at a space) or
with one space (it was broken inside a word).
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
from collections.abc import Iterator
from typing import BinaryIO

import numpy as np

from ._errors import FileFormatError, ParameterError
from ._image import Image, VoxelSize

HEADER_BYTES = 1024
HISTORY_LINES = 15
HISTORY_WIDTH = 64
UNSET = 8224  # b"  " read as an int16, in either byte order
MAX_SIZE = 999_999  # six ASCII digits
PIXEL_TYPES = {"I": np.dtype(np.int16), "R": np.dtype(np.float32), "C": np.dtype(np.complex64)}
VOXEL_PREFIX = "eprjax voxel um:"
_VOXEL_LINE = re.compile(
    r"^eprjax voxel um: x (?P<x>\S+) y (?P<y>\S+) z (?P<z>\S+)$"
)


@dataclasses.dataclass(frozen=True)
class Header:
    """The fields of an i2i header, as stored (``nz`` counts the planes of all volumes)."""

    pixel_type: str
    nx: int
    ny: int
    nz: int
    byteorder: str  # '>' or '<'
    minimum: int = 0
    maximum: int = 0
    origin_x: int = 0
    origin_y: int = 0
    volumes: int = 1
    lines: tuple[str, ...] = ()

    @property
    def dtype(self) -> np.dtype:
        return PIXEL_TYPES[self.pixel_type].newbyteorder(self.byteorder)

    @property
    def data_bytes(self) -> int:
        return self.nx * self.ny * self.nz * PIXEL_TYPES[self.pixel_type].itemsize

    @property
    def shape(self) -> tuple[int, ...]:
        """The array shape: (Z, Y, X), or (T, Z, Y, X) when there are several volumes."""
        if self.volumes > 1:
            return (self.volumes, self.nz // self.volumes, self.ny, self.nx)
        return (self.nz, self.ny, self.nx)


def _size_field(raw: bytes, start: int, axis: str, name: str) -> int:
    field = raw[start : start + 6]
    text = field.decode("ascii", errors="replace").strip()
    if not text.isdigit() or not text.isascii():
        raise FileFormatError(
            f"{name}: malformed i2i header: the {axis} size (bytes {start}-{start + 5}) "
            f"is {field!r}, not a number"
        )
    value = int(text)
    if value < 1:
        raise FileFormatError(f"{name}: malformed i2i header: the {axis} size is {value}")
    return value


def parse_header(raw: bytes, name: str = "i2i file") -> Header:
    """Parse the first 1024 bytes of an i2i file; `FileFormatError` if they are not one."""
    if len(raw) == 0:
        raise FileFormatError(f"{name}: the file is empty")
    if len(raw) < HEADER_BYTES:
        raise FileFormatError(
            f"{name}: truncated i2i header: {len(raw)} bytes, the header alone has {HEADER_BYTES}"
        )
    kind = chr(raw[0])
    if kind not in PIXEL_TYPES:
        raise FileFormatError(
            f"{name}: not an i2i file: the pixel type byte is {raw[:1]!r}, expected I, R or C"
        )
    if raw[1:2] != b" ":
        raise FileFormatError(f"{name}: not an i2i file: byte 1 is {raw[1:2]!r}, expected a space")
    nx = _size_field(raw, 2, "X", name)
    ny = _size_field(raw, 8, "Y", name)
    nz = _size_field(raw, 14, "Z", name)
    order = raw[20:21]
    if order not in (b"B", b"L"):
        raise FileFormatError(
            f"{name}: malformed i2i header: the byte order (byte 20) is {order!r}, expected B or L"
        )
    byteorder = ">" if order == b"B" else "<"
    minimum, maximum, origin_x, origin_y, volumes = (
        int(v) for v in np.frombuffer(raw, dtype=byteorder + "i2", count=5, offset=21)
    )
    minimum, maximum, origin_x, origin_y = (
        0 if v == UNSET else v for v in (minimum, maximum, origin_x, origin_y)
    )
    if volumes == UNSET or volumes < 1:
        volumes = 1
    if nz % volumes:
        raise FileFormatError(
            f"{name}: malformed i2i header: {nz} planes cannot be split into {volumes} volumes"
        )
    lines = tuple(
        raw[64 + HISTORY_WIDTH * i : 64 + HISTORY_WIDTH * (i + 1)]
        .decode("ascii", errors="replace")
        .replace("\x00", " ")
        .rstrip()
        for i in range(HISTORY_LINES)
    )
    return Header(kind, nx, ny, nz, byteorder, minimum, maximum, origin_x, origin_y, volumes, lines)


def _format_size(value: int) -> bytes:
    # "%5d " as BIG's writer has it; six digits and no separating space when it must.
    text = f"{value:5d} " if value < 100_000 else f"{value:6d}"
    return text.encode("ascii")


def format_header(header: Header) -> bytes:
    """The 1024 header bytes for ``header``."""
    for axis, value in zip("XYZ", (header.nx, header.ny, header.nz), strict=True):
        if not 1 <= value <= MAX_SIZE:
            raise ParameterError(f"the {axis} size {value} does not fit an i2i header (1 to {MAX_SIZE})")
    raw = bytearray(b" " * HEADER_BYTES)
    raw[0:2] = header.pixel_type.encode("ascii") + b" "
    raw[2:8] = _format_size(header.nx)
    raw[8:14] = _format_size(header.ny)
    raw[14:20] = _format_size(header.nz)
    raw[20:21] = b"B" if header.byteorder == ">" else b"L"
    fields = (header.minimum, header.maximum, header.origin_x, header.origin_y, header.volumes)
    raw[21:31] = np.asarray(fields, dtype=header.byteorder + "i2").tobytes()
    if len(header.lines) > HISTORY_LINES:
        raise ParameterError(f"an i2i header holds {HISTORY_LINES} history lines, got {len(header.lines)}")
    for i, line in enumerate(header.lines):
        data = line.encode("ascii")
        if len(data) > HISTORY_WIDTH:
            raise ParameterError(f"an i2i history line holds {HISTORY_WIDTH} characters, got {line!r}")
        start = 64 + HISTORY_WIDTH * i
        raw[start : start + len(data)] = data
    return bytes(raw)


# -- the history lines --------------------------------------------------------------------


def _wrap(entry: str) -> list[str]:
    """Cut one history entry into 64-character lines (see the module's docstring)."""
    lines = []
    rest, prefix = entry, ""
    while len(prefix) + len(rest) > HISTORY_WIDTH:
        room = HISTORY_WIDTH - len(prefix)
        cut = rest.rfind(" ", 1, room + 1)
        if cut > 0:
            lines.append(prefix + rest[:cut])
            rest, prefix = rest[cut + 1 :], "  "
        else:
            lines.append(prefix + rest[:room])
            rest, prefix = rest[room:], " "
    lines.append(prefix + rest)
    return lines


def _unwrap(lines: tuple[str, ...]) -> list[str]:
    entries: list[str] = []
    for line in lines:
        if not line.strip():
            continue
        if entries and line.startswith("  "):
            entries[-1] += " " + line.strip()
        elif entries and line.startswith(" "):
            entries[-1] += line.strip()
        else:
            entries.append(line.strip())
    return entries


def _format_um(value: float | None) -> str:
    return "?" if value is None else f"{value:.7g}"


def _parse_um(text: str) -> float | None:
    try:
        value = float(text)
    except ValueError:
        return None
    return value if math.isfinite(value) and value > 0 else None


def history_lines(history: tuple[str, ...], voxel_size_um: VoxelSize) -> tuple[str, ...]:
    """The header's history lines: the voxel size first (if known), then the newest entries
    that fit; an entry too long for all the lines is cut short."""
    z, y, x = voxel_size_um
    head = []
    if (x, y, z) != (None, None, None):
        head = [f"{VOXEL_PREFIX} x {_format_um(x)} y {_format_um(y)} z {_format_um(z)}"]
    room = HISTORY_LINES - len(head)
    kept: list[list[str]] = []
    for entry in reversed(history):
        wrapped = _wrap(entry)
        used = sum(len(w) for w in kept)
        if used + len(wrapped) > room:
            if not kept:
                kept.append(wrapped[:room])
            break
        kept.append(wrapped)
    return tuple(head + [line for wrapped in reversed(kept) for line in wrapped])


def split_history(lines: tuple[str, ...]) -> tuple[tuple[str, ...], VoxelSize]:
    """The history entries and the voxel size (z, y, x) that the header's lines hold."""
    voxel: VoxelSize = (None, None, None)
    history = []
    for entry in _unwrap(lines):
        match = _VOXEL_LINE.match(entry)
        if match:
            voxel = (_parse_um(match["z"]), _parse_um(match["y"]), _parse_um(match["x"]))
        else:
            history.append(entry)
    return tuple(history), voxel


# -- reading and writing ------------------------------------------------------------------


def read_i2i(path: str | os.PathLike[str], *, name: str | None = None) -> Image:
    """Read an i2i file, memory-mapped: a 10 GB file opens at once and nothing is loaded
    until used. The array is (Z, Y, X), or (T, Z, Y, X) when the file holds several volumes,
    in the file's byte order; it is read-only."""
    name = name or os.fspath(path)
    with open(path, "rb") as f:
        raw = f.read(HEADER_BYTES)
        size = os.fstat(f.fileno()).st_size
    header = parse_header(raw, name)
    expected = HEADER_BYTES + header.data_bytes
    if size != expected:
        what = "truncated" if size < expected else "longer than its header says"
        raise FileFormatError(
            f"{name}: {what}: the header describes {header.nx} x {header.ny} x {header.nz} "
            f"type {header.pixel_type} pixels ({expected} bytes with the header), "
            f"the file has {size} bytes"
        )
    data = np.memmap(path, dtype=header.dtype, mode="r", offset=HEADER_BYTES, shape=header.shape)
    history, voxel = split_history(header.lines)
    return Image(data, voxel_size_um=voxel, history=history, origin=(header.origin_y, header.origin_x))


def pixel_type_for(dtype: np.dtype) -> str:
    """The i2i type that holds ``dtype`` best: int16 as 'I', complex as 'C', the rest as 'R'."""
    dtype = np.dtype(dtype)
    if dtype == np.int16:
        return "I"
    if dtype.kind == "c":
        return "C"
    if dtype.kind in "biuf":
        return "R"
    raise ParameterError(f"cannot write pixels of dtype {dtype} to i2i")


def _clip_int16(value: float) -> int:
    if not math.isfinite(value):
        return 0
    return int(min(max(round(value), -32768), 32767))


def write_i2i(
    f: BinaryIO,
    image: Image,
    planes: Iterator[np.ndarray],
    *,
    pixel_type: str,
    byteorder: str = ">",
) -> None:
    """Write ``image``'s header and then ``planes`` (its (Y, X) planes in order, already of
    the ``pixel_type``'s dtype) to the open file ``f``; the header's minimum and maximum are
    filled in afterwards, so the data pass once through memory, a plane at a time."""
    shape = image.shape
    if len(shape) == 2:
        shape = (1, *shape)
    volumes = shape[0] if len(shape) == 4 else 1
    nz = int(np.prod(shape[:-2]))
    for axis, value in zip("xy", (image.origin[1], image.origin[0]), strict=True):
        if not -32768 <= value <= 32767 or value == UNSET:
            raise ParameterError(f"the {axis} origin {value} does not fit an i2i header (int16, not {UNSET})")
    if volumes >= 32767:
        raise ParameterError(f"{volumes} volumes do not fit an i2i header (at most 32766)")
    header = Header(
        pixel_type,
        nx=shape[-1],
        ny=shape[-2],
        nz=nz,
        byteorder=byteorder,
        origin_x=image.origin[1],
        origin_y=image.origin[0],
        volumes=volumes,
        lines=history_lines(image.history, image.voxel_size_um),
    )
    f.write(format_header(header))
    out_dtype = header.dtype
    lo, hi = math.inf, -math.inf
    count = 0
    for plane in planes:
        plane = np.asarray(plane)
        if plane.shape != (header.ny, header.nx):
            raise ParameterError(f"plane of shape {plane.shape}, expected {(header.ny, header.nx)}")
        values = plane.real if pixel_type == "C" else plane
        if values.size and values.dtype.kind in "iuf":
            finite = values if values.dtype.kind != "f" else values[np.isfinite(values)]
            if finite.size:
                lo, hi = min(lo, float(finite.min())), max(hi, float(finite.max()))
        f.write(np.ascontiguousarray(plane, dtype=out_dtype).tobytes())
        count += 1
    if count != nz:
        raise ParameterError(f"wrote {count} planes, the header says {nz}")
    if pixel_type != "C" and lo <= hi:
        f.seek(21)
        f.write(np.asarray([_clip_int16(lo), _clip_int16(hi)], dtype=byteorder + "i2").tobytes())
    f.seek(0, os.SEEK_END)
