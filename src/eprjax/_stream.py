"""Volumes larger than memory: segments restored a chunk at a time into a store on disk,
resumable, shared among processes, and recomposed a segment at a time (DESIGN.md section 2,
"Segments").

What a run holds in memory is one chunk of segments (on the device) and one segment (on the
host), never the volume: the input is read a region at a time (a memory-mapped file is mapped
for the read and let go after), every finished segment is saved to the store at once (written
whole, then renamed), and the result is summed into a float32 file on disk, a segment at a
time, from which the output is written a plane at a time.

The store is a folder beside the output: ``manifest.json`` (what was restored, and how) and
one ``.npz`` file per finished segment. A run that stops part-way leaves it; a later run with
the same inputs and settings (``resume=True``) restores only what is missing. Several
processes (hosts) share one store on a shared file system: each restores its share of the
segments, and one of them recomposes the result.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ._errors import EprjaxError, ParameterError
from ._io import _planes, atomic_output, file_backing
from ._operator import make_grid
from ._restore import local_devices, solve_segments
from ._segments import SegmentPlan, weight, weight_total

MANIFEST = "manifest.json"
RESULT = "restored.f32"
STORE_FORMAT = 1


class Source:
    """The volumes (T, Z, Y, X) of an image, read a region at a time.

    Pixels in a file (a memory-mapped i2i or TIFF) are mapped for each read and let go after,
    so that a run over a large file keeps in memory what it restores, not all it has read.
    Planes (Y, X) and single volumes (Z, Y, X) count as one volume (of one plane)."""

    def __init__(self, data: Any) -> None:
        shape = tuple(int(n) for n in np.shape(data))
        if len(shape) not in (2, 3, 4):
            raise ParameterError(f"expected an image of 2 to 4 axes, got shape {shape}")
        self.shape: tuple[int, int, int, int] = (1,) * (4 - len(shape)) + shape  # type: ignore[assignment]
        self._data = data
        self._file = file_backing(data)

    @property
    def count(self) -> int:
        """How many volumes (T)."""
        return self.shape[0]

    def _open(self) -> np.ndarray:
        if self._file is None:
            return np.asarray(self._data).reshape(self.shape)
        name, offset, dtype, shape = self._file
        return np.memmap(name, dtype=dtype, mode="r", offset=offset, shape=shape).reshape(self.shape)

    def region(self, t: int, y: int, x: int, sy: int, sx: int) -> np.ndarray:
        """Volume ``t``'s voxels [:, y:y+sy, x:x+sx], float32."""
        view = self._open()
        try:
            return np.array(view[t, :, y : y + sy, x : x + sx], dtype=np.float32)
        finally:
            del view

    def volume(self, t: int) -> np.ndarray:
        """Volume ``t``, float32, in memory."""
        return self.region(t, 0, 0, self.shape[2], self.shape[3])

    def check_finite(self, name: str) -> None:
        """A one-line `ParameterError` if any value is NaN or infinite (a plane at a time)."""
        if np.dtype(getattr(self._data, "dtype", np.float32)).kind not in "fc":
            return
        for index, plane in enumerate(_planes(np.asanyarray(self._data), lambda p: p)):
            if not bool(np.all(np.isfinite(plane))):
                t, z = divmod(index, self.shape[1])
                where = f"volume {t + 1}, " if self.shape[0] > 1 else ""
                raise ParameterError(f"{name}: the data hold NaN or infinite values ({where}plane {z + 1})")


class Store:
    """The finished segments of a run, one file each, in the folder ``path``."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)

    def _file(self, t: int, index: int) -> Path:
        return self.path / f"t{t:05d}-s{index:06d}.npz"

    def has(self, t: int, index: int) -> bool:
        return self._file(t, index).exists()

    def save(self, t: int, index: int, f: np.ndarray, iterations: int, relative_gradient: float, result: int) -> None:
        """Save a restored segment, whole or not at all."""
        with atomic_output(self._file(t, index)) as tmp, open(tmp, "wb") as out:
            np.savez(out, f=f, iterations=iterations, relative_gradient=relative_gradient, result=result)

    def load(self, t: int, index: int) -> np.ndarray:
        """A saved segment's restoration."""
        with np.load(self._file(t, index)) as saved:
            return saved["f"]

    def statistics(self, t: int, index: int) -> tuple[int, float, int]:
        """A saved segment's (iterations, relative gradient, result)."""
        with np.load(self._file(t, index)) as saved:
            return int(saved["iterations"]), float(saved["relative_gradient"]), int(saved["result"])

    def finished(self) -> int:
        """How many segments are saved (of all volumes)."""
        return sum(1 for _ in self.path.glob("t*-s*.npz"))

    def manifest(self) -> dict[str, Any] | None:
        try:
            return json.loads((self.path / MANIFEST).read_text())
        except (OSError, ValueError):
            return None

    def matches(self, manifest: dict[str, Any]) -> bool:
        """Whether the store was prepared (`prepare_store`) for a run described by ``manifest``."""
        return self.manifest() == _stamped(manifest)


def _stamped(manifest: dict[str, Any]) -> dict[str, Any]:
    return {"eprjax_store": STORE_FORMAT, **manifest}


def prepare_store(path: str | os.PathLike[str], manifest: dict[str, Any], *, resume: bool) -> tuple[Store, int]:
    """The store for a run described by ``manifest`` (JSON values), and how many finished
    segments it keeps. ``resume``: keep the segments of an earlier run with the same
    manifest (a `ParameterError` naming what differs if it is not the same); otherwise an
    earlier run's segments are discarded. Call from one process only."""
    store = Store(path)
    manifest = _stamped(manifest)
    old = store.manifest()
    if store.path.exists() and not store.path.is_dir():
        raise ParameterError(f"{store.path}: exists and is not a folder; remove it (eprjax keeps finished segments there)")
    if resume and old is not None:
        differ = sorted(k for k in set(old) | set(manifest) if old.get(k) != manifest.get(k))
        if differ:
            shown = "; ".join(f"{k}: {_short(old.get(k))} then, {_short(manifest.get(k))} now" for k in differ[:3])
            raise ParameterError(
                f"-resume: the segments in {store.path} were restored from other inputs or settings ({shown}); "
                "run without -resume to start again"
            )
        return store, store.finished()
    if store.path.exists():
        shutil.rmtree(store.path)
    store.path.mkdir(parents=True)
    with atomic_output(store.path / MANIFEST) as tmp:
        tmp.write_text(json.dumps(manifest, indent=1, sort_keys=True))
    return store, 0


def _short(value: Any) -> str:
    text = json.dumps(value)
    return text if len(text) <= 60 else text[:57] + "..."


def my_segments(plan: SegmentPlan, volumes: int, share: tuple[int, int]) -> list[tuple[int, int]]:
    """The (volume, segment) pairs process ``share[0]`` of ``share[1]`` restores: every
    share[1]-th, so that each process gets segments from all over the volume."""
    index, count = share
    pairs = [(t, i) for t in range(volumes) for i in range(plan.count)]
    return pairs[index::count]


def restore_into_store(
    source: Source,
    h: np.ndarray,
    *,
    alpha: float,
    tol: float,
    max_iterations: int,
    plan: SegmentPlan,
    store: Store,
    devices: int | None = None,
    share: tuple[int, int] = (0, 1),
    report: Callable[[int, int], None] | None = None,
    one: Callable[[np.ndarray, int], tuple[np.ndarray, int, float, int]] | None = None,
    weigh: Callable[[np.ndarray], np.ndarray] | None = None,
) -> int:
    """Restore this process's share of the segments of every volume that the store does not
    hold yet, a chunk (``plan.batch`` segments on each device) at a time, saving each as it
    is done. Every chunk has the same size (the last is padded), so that one compiled
    function serves the run. ``report(done, total)`` after each chunk. ``one(segment,
    volume)``: restore each segment by this instead, one at a time (for progress reports as
    it iterates); it returns (f, iterations, relative gradient, result). ``weigh(segment)``:
    the data term's weights for a segment (None: unweighted). Returns how many segments
    were restored."""
    grid = make_grid((plan.data_shape[0], *plan.segment), plan.pad, plan.factor)
    mine = my_segments(plan, source.count, share)
    todo = [(t, i) for t, i in mine if not store.has(t, i)]
    chunk = min(plan.batch * len(local_devices(devices)), max(1, len(mine)))
    sy, sx = plan.segment
    if one is not None:
        for done, (t, i) in enumerate(todo, 1):
            store.save(t, i, *one(source.region(t, *plan.starts[i], sy, sx), t))
            if report is not None:
                report(done, len(todo))
        return len(todo)
    for start in range(0, len(todo), chunk):
        pairs = todo[start : start + chunk]
        stacked = np.stack([source.region(t, *plan.starts[i], sy, sx) for t, i in pairs])
        f, k, rel, result = solve_segments(
            stacked, h, alpha, tol, max_iterations, grid=grid, batch=plan.batch, devices=devices, size=chunk,
            weights=None if weigh is None else np.stack([weigh(s) for s in stacked]),
        )
        del stacked
        for j, (t, i) in enumerate(pairs):
            store.save(t, i, f[j], int(k[j]), float(rel[j]), int(result[j]))
        del f
        if report is not None:
            report(start + len(pairs), len(todo))
    return len(todo)


def assemble(store: Store, plan: SegmentPlan, volumes: int, *, squeeze: bool = False) -> np.memmap:
    """The restored volumes (T, Z, Y, X) on the restoration's grid, recomposed from the
    store's segments into ``restored.f32`` there, a segment at a time; returned read-only
    (memory-mapped; ``squeeze``: one volume as (Z, Y, X)). An `EprjaxError` if a segment is
    missing."""
    fine = plan.finer()
    shape = (volumes, *fine.data_shape)
    path = store.path / RESULT
    np.memmap(path, dtype=np.float32, mode="w+", shape=shape).flush()  # zeros, on disk
    total = weight_total(fine)
    sy, sx = fine.segment
    for t in range(volumes):
        for i, (y, x) in enumerate(fine.starts):
            if not store.has(t, i):
                raise EprjaxError(f"{store.path}: segment {i + 1} of volume {t + 1} is missing; run again with -resume")
            share = (weight(fine, i) / total[y : y + sy, x : x + sx]).astype(np.float32)
            f = store.load(t, i) * share
            out = np.memmap(path, dtype=np.float32, mode="r+", shape=shape)
            out[t, :, y : y + sy, x : x + sx] += f
            out.flush()
            del out, f
    return np.memmap(path, dtype=np.float32, mode="r", shape=shape[1:] if squeeze and volumes == 1 else shape)


def summary(store: Store, plan: SegmentPlan, volumes: int) -> tuple[int, float, int]:
    """(most iterations, largest relative gradient, worst result) over the stored segments."""
    stats = [store.statistics(t, i) for t in range(volumes) for i in range(plan.count)]
    return max(k for k, _, _ in stats), max(r for _, r, _ in stats), max(x for _, _, x in stats)


def describe_share(share: tuple[int, int], plan: SegmentPlan, volumes: int, devices: Sequence[Any]) -> str:
    mine = len(my_segments(plan, volumes, share))
    who = f"process {share[0] + 1} of {share[1]}: " if share[1] > 1 else ""
    what = "segments" if plan.count > 1 else "volumes"
    return f"{who}{mine} of {volumes * plan.count} {what} on {len(devices)} device(s), {plan.batch} at a time on each"
