"""`Image`: pixels together with what the files say about them."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from ._errors import ParameterError

AXES = {2: "YX", 3: "ZYX", 4: "TZYX"}

VoxelSize = tuple[float | None, float | None, float | None]


def _clean_history(lines: Iterable[str]) -> tuple[str, ...]:
    """Each entry one stripped line of printable ASCII (i2i headers hold nothing else)."""
    out = []
    for line in lines:
        if not isinstance(line, str):
            raise ParameterError(f"history entries must be strings, got {type(line).__name__}")
        text = "".join(c if " " <= c <= "~" else ("?" if c not in "\t\r\n" else " ") for c in line)
        text = " ".join(text.split())
        if text:
            out.append(text)
    return tuple(out)


def _clean_voxel_size(voxel_size_um: Sequence[float | None] | None) -> VoxelSize:
    if voxel_size_um is None:
        return (None, None, None)
    values = tuple(voxel_size_um)
    if len(values) != 3:
        raise ParameterError(
            f"voxel_size_um must be (z, y, x) in micrometres, got {len(values)} values: {values!r}"
        )
    out: list[float | None] = []
    for axis, value in zip("zyx", values, strict=True):
        if value is None:
            out.append(None)
            continue
        v = float(value)
        if not (math.isfinite(v) and v > 0):
            raise ParameterError(f"voxel size along {axis} must be a positive number of um, got {value!r}")
        out.append(v)
    return (out[0], out[1], out[2])


@dataclasses.dataclass(frozen=True, eq=False)
class Image:
    """An image and its metadata, as `eprjax.read` returns it and `eprjax.write` takes it.

    Attributes:
        data: the pixels, axes (Y, X), (Z, Y, X) or (T, Z, Y, X), in the dtype of the file.
            Read from an uncompressed file it is a read-only memory map: nothing is loaded
            until it is used, and the file cannot be changed through it.
        voxel_size_um: (z, y, x) voxel size in micrometres; None where unknown.
        history: the processing history, oldest first, one entry per step
            (``"* preppsf -NA 1.4 ..."``), each a line of printable ASCII.
        origin: (y, x) position of this image in a larger frame, in pixels (the i2i header's
            y and x origin; Bio-Formats calls them "Image position").

    Example:
        >>> img = Image(np.zeros((4, 8, 8), np.float32), voxel_size_um=(0.25, 0.1, 0.1))
        >>> img.axes, img.shape
        ('ZYX', (4, 8, 8))
    """

    data: Any
    voxel_size_um: VoxelSize = (None, None, None)
    history: tuple[str, ...] = ()
    origin: tuple[int, int] = (0, 0)

    def __post_init__(self) -> None:
        data = self.data
        if not hasattr(data, "shape") or not hasattr(data, "dtype"):
            data = np.asarray(data)
            object.__setattr__(self, "data", data)
        if data.ndim not in AXES:
            raise ParameterError(
                f"an image must have 2 (Y, X), 3 (Z, Y, X) or 4 (T, Z, Y, X) axes, got shape {tuple(data.shape)}"
            )
        if any(n < 1 for n in data.shape):
            raise ParameterError(f"an image must not be empty, got shape {tuple(data.shape)}")
        object.__setattr__(self, "voxel_size_um", _clean_voxel_size(self.voxel_size_um))
        object.__setattr__(self, "history", _clean_history(self.history))
        origin = tuple(int(v) for v in self.origin)
        if len(origin) != 2:
            raise ParameterError(f"origin must be (y, x), got {self.origin!r}")
        object.__setattr__(self, "origin", origin)

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.data.shape)

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(self.data.dtype)

    @property
    def ndim(self) -> int:
        return len(self.data.shape)

    @property
    def axes(self) -> str:
        """The axes' names: ``"YX"``, ``"ZYX"`` or ``"TZYX"``."""
        return AXES[self.ndim]

    def __array__(self, dtype=None, copy=None):
        if copy:
            return np.array(self.data, dtype=dtype, copy=True)
        return np.asarray(self.data, dtype=dtype)

    def replace(self, **changes: Any) -> Image:
        """A copy with some fields changed (``img.replace(data=restored)``)."""
        return dataclasses.replace(self, **changes)

    def add_history(self, *lines: str) -> Image:
        """A copy with ``lines`` appended to the history."""
        return dataclasses.replace(self, history=self.history + tuple(lines))


def as_image(image_or_array: Any, **metadata: Any) -> Image:
    """An `Image` from an `Image` (its fields overridden by non-None ``metadata``) or an array."""
    changes = {k: v for k, v in metadata.items() if v is not None}
    if isinstance(image_or_array, Image):
        return image_or_array.replace(**changes) if changes else image_or_array
    return Image(image_or_array, **changes)
