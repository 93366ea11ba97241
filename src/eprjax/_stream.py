"""Volumes larger than memory: segments restored a chunk at a time into a store on disk,
resumable, shared among processes, and recomposed a segment at a time (DESIGN.md section 2,
"Segments").

What a run holds in memory is one chunk of segments (on the device) and one segment (on the
host), never the volume: the input is read a region at a time (a memory-mapped file is mapped
for the read and let go after), every finished segment is saved to the store at once (written
whole, then renamed), and the result is summed into a float32 file on disk, a segment at a
time, from which the output is written a plane at a time.

The store is a Zarr group in a folder beside the output (`Store`): a marker saying it is
eprjax's, one chunk per segment, a record per finished segment (checksum and statistics),
the manifest (what was restored, and how, the input known by its content) in its
attributes, and the lock of the run using it. A run that stops part-way leaves it; a later
run with the same inputs and settings (``resume=True``) restores only what is missing or
damaged. Several processes (hosts) share one store on a shared file system: each claims the
next free segments as it goes, and one of them recomposes the result.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import shutil
import socket
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from eprjax_launch import M_ARENA_MAX, M_MMAP_MAX, M_TRIM_THRESHOLD, set_malloc

from ._errors import EprjaxError, ParameterError
from ._io import _alive, _planes, atomic_output, file_backing
from ._omezarr import iter_files
from ._operator import make_grid
from ._restore import local_devices, solve_segments
from ._segments import SegmentPlan, weight, weight_total

log = logging.getLogger("eprjax")

RESULT = "restored.f32"


class Source:
    """The volumes (T, Z, Y, X) of an image, read a region at a time.

    Pixels in a file (a memory-mapped i2i or TIFF) are mapped for each read and let go after,
    so that a run over a large file keeps in memory what it restores, not all it has read.
    Planes (Y, X) and single volumes (Z, Y, X) count as one volume (of one plane)."""

    def __init__(self, data: Any) -> None:
        if not (hasattr(data, "shape") and hasattr(data, "dtype") and hasattr(data, "__getitem__")):
            data = np.asarray(data)
        shape = tuple(int(n) for n in data.shape)
        if len(shape) not in (2, 3, 4):
            raise ParameterError(f"expected an image of 2 to 4 axes, got shape {shape}")
        self.shape: tuple[int, int, int, int] = (1,) * (4 - len(shape)) + shape  # type: ignore[assignment]
        self._data = data
        self._file = file_backing(data)
        self._chunks = _chunk_shape(data)

    @property
    def count(self) -> int:
        """How many volumes (T)."""
        return self.shape[0]

    def _open(self) -> Any:
        if self._file is None:
            return self._data
        name, offset, dtype, shape = self._file
        return np.memmap(name, dtype=dtype, mode="r", offset=offset, shape=shape)

    def region(self, t: int, y: int, x: int, sy: int, sx: int) -> np.ndarray:
        """Volume ``t``'s voxels [:, y:y+sy, x:x+sx], float32; only those are read from a
        lazy array (Zarr, dask, h5py, a memory map), and from a chunked one a chunk at a
        time, so that no more than one chunk is decompressed at once (`io_bytes`)."""
        view = self._open()
        try:
            if len(view.shape) == 2:
                return np.array(view[y : y + sy, x : x + sx], dtype=np.float32)[None]
            lead = (t,) if len(view.shape) == 4 else ()
            nz, ny, nx = self.shape[1:]
            y1, x1 = min(y + sy, ny), min(x + sx, nx)
            out = np.empty((nz, y1 - y, x1 - x), np.float32)
            cz, cy, cx = self._chunks
            for z0 in range(0, nz, cz):
                for ya in _aligned(y, y1, cy):
                    for xa in _aligned(x, x1, cx):
                        yb, xb = min((ya // cy + 1) * cy, y1), min((xa // cx + 1) * cx, x1)
                        out[z0 : z0 + cz, ya - y : yb - y, xa - x : xb - x] = view[(*lead, slice(z0, z0 + cz), slice(ya, yb), slice(xa, xb))]
            return out
        finally:
            del view
            release_memory()

    @property
    def io_bytes(self) -> int:
        """What reading a region holds besides the region itself, for a chunked array: four
        chunks' worth (a chunk compressed and decompressed, and the copies zarr's codec
        threads keep of them in their own allocator arenas: a 32x1024x1024 OME-Zarr run in
        4 MiB chunks peaked 32 MiB above the same run from a memory-mapped i2i file);
        nothing for a memory map or an array in memory."""
        if self._chunks == (1 << 30,) * 3:
            return 0
        cz, cy, cx = (min(c, n) for c, n in zip(self._chunks, self.shape[1:], strict=True))
        return 4 * cz * cy * cx * np.dtype(getattr(self._data, "dtype", np.float32)).itemsize

    def volume(self, t: int) -> np.ndarray:
        """Volume ``t``, float32, in memory."""
        return self.region(t, 0, 0, self.shape[2], self.shape[3])

    def check_weights(self) -> None:
        """A one-line `ParameterError` unless the values are finite, >= 0 and not all zero."""
        positive = False
        for plane in _planes(self._data, lambda p: p):
            if not bool(np.all(np.isfinite(plane) & (plane >= 0))):
                raise ParameterError("weights must be finite and >= 0")
            positive = positive or bool(np.any(plane > 0))
        if not positive:
            raise ParameterError("the weights are zero everywhere: no voxel is left to fit")

    def check_finite(self, name: str) -> None:
        """A one-line `ParameterError` if any value is NaN or infinite (a plane at a time)."""
        if np.dtype(getattr(self._data, "dtype", np.float32)).kind not in "fc":
            return
        for index, plane in enumerate(_planes(self._data, lambda p: p)):
            if not bool(np.all(np.isfinite(plane))):
                t, z = divmod(index, self.shape[1])
                where = f"volume {t + 1}, " if self.shape[0] > 1 else ""
                raise ParameterError(f"{name}: the data hold NaN or infinite values ({where}plane {z + 1})")


def _libc() -> Any:
    try:
        import ctypes  # noqa: PLC0415

        libc = ctypes.CDLL("libc.so.6")
        libc.malloc_trim.argtypes = [ctypes.c_size_t]
        return libc
    except (OSError, AttributeError):  # not Linux with glibc
        return None


_LIBC = _libc()
_KEEP_TRIM = 2**31 - 1  # give back only over 2 GiB free at the heap's top (mallopt takes an int)


def keep_freed_memory() -> bool:
    """Have glibc's malloc serve every size from its heaps and keep what is freed there for
    the next allocation (no mmap per large array, trimming only over 2 GiB free; one arena
    for threads that have none yet), unless ``EPRJAX_MALLOC=system``. `epr` does this for a
    volume restored whole: the iteration allocates and frees arrays of the volume's size
    every time (XLA's FFT's work space, the host FFT's operands), and glibc serves
    allocations over 32 MiB by mmap and unmaps them when freed, so that each was paid again
    in page faults. With the commands' one arena (`eprjax_launch.one_arena`), measured on the
    shared light-sheet stack (16M voxels, 2 cores): 10.2 million page faults, a third of the
    CPU time in the kernel, 754-786 ms per iteration; kept, 0.34-0.37 million, 464-466 ms
    (docs/performance.md). Not for segmented runs: kept memory raised the slow memory test's
    peak from 94-98 to 141-182 MiB over its baseline (budget 100). The process's resident
    memory stays near its peak until it ends; `release_memory` still gives memory back.
    Returns whether the allocator was changed (False where the C library is not glibc)."""
    return set_malloc((M_ARENA_MAX, 1), (M_MMAP_MAX, 0), (M_TRIM_THRESHOLD, _KEEP_TRIM))


def release_memory() -> None:
    """Give the memory freed since the last call back to the system (glibc's malloc_trim,
    over all its arenas). Reading compressed chunks from threads (Zarr's codec pool) leaves
    freed buffers in per-thread arenas that the process would otherwise keep: measured
    +110 MiB of resident memory over a segmented run on a Zarr input, which the memory budget
    does not count. Nothing where the C library is not glibc."""
    if _LIBC is not None:
        _LIBC.malloc_trim(0)


def _chunk_shape(array: Any) -> tuple[int, int, int]:
    """The (z, y, x) chunk of a chunked array (Zarr, an OME-Zarr's pixels, dask, a chunked
    h5py dataset), the largest where chunks differ (dask); a huge number where it has none."""
    none = (1 << 30,) * 3
    chunks = getattr(array, "chunks", None)
    if not isinstance(chunks, tuple) or len(chunks) < 3:
        return none
    sizes = [max(c) if isinstance(c, tuple) else c for c in chunks[-3:]]
    return tuple(int(c) for c in sizes) if all(isinstance(c, (int, np.integer)) and c >= 1 for c in sizes) else none  # type: ignore[return-value]


def _aligned(start: int, stop: int, step: int) -> list[int]:
    """The starts of the pieces of [start, stop) that chunk boundaries (multiples of
    ``step``) cut it into."""
    return [start, *range((start // step + 1) * step, stop, step)]


STORE_FORMAT = 2
MARKER = "eprjax-store.json"  # written first: the folder is an eprjax store (and may be removed by eprjax)
SEGMENTS = "segments"  # the Zarr array (volume, segment, z, y, x), one chunk per segment
DONE = "done"  # one record per finished segment: its checksum and statistics, written after its chunk
CLAIMS = "claims"  # one file per segment a process has taken on (created exclusively)
LOCK = "lock.json"  # the run holding the store: host, process, start; its mtime the heartbeat
HEARTBEAT = 10.0  # seconds between the lock's (and the claims') heartbeats
WAIT_FOR_OTHERS = 1.0  # seconds a process waits before looking again at segments others are restoring
STALE = 120.0  # a lock whose heartbeat is older than this (from another host) belongs to a dead run
FINGERPRINT_WHOLE = 1 << 30  # inputs up to this many bytes are hashed whole; larger ones by sampled blocks
FINGERPRINT_BLOCKS = 256  # ... this many blocks of 1 MiB, evenly spaced, the first and the last among them
_LEGACY = re.compile(r"(manifest\.json|restored\.f32|t\d{5}-s\d{6}\.npz|\..*\.part)")  # format 1's files


class Store:
    """The finished segments of a run: a Zarr group in the folder ``path``.

    One float32 array (volume, segment, z, y, x) with one chunk per segment (written even
    when all zero, so that a zero segment does not look missing), and beside it one record
    per finished segment (its SHA-1, shape, iterations, relative gradient and result),
    written after the chunk: a segment counts as finished only when its record exists and
    its chunk reads back with that shape, finite and with that checksum. The manifest (what
    was restored, and how) is in the group's attributes."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._array: Any = None

    def _record(self, t: int, index: int) -> Path:
        return self.path / DONE / f"t{t:05d}-s{index:06d}.json"

    def array(self) -> Any:
        if self._array is None:
            import zarr

            self._array = zarr.open_array(str(self.path / SEGMENTS), mode="r+")
        return self._array

    def has(self, t: int, index: int) -> bool:
        """Whether segment ``index`` of volume ``t`` is finished and intact (`check`)."""
        return self.check(t, index) is None

    def recorded(self, t: int, index: int) -> bool:
        """Whether the segment has a record (finished; `prepare_store` checked it on -resume)."""
        return self._record(t, index).exists()

    def check(self, t: int, index: int) -> str | None:
        """None if the segment is finished and intact, else what is wrong with it."""
        try:
            self._verified(t, index)
        except _Damaged as e:
            return str(e)
        return None

    def _verified(self, t: int, index: int) -> tuple[np.ndarray, dict[str, Any]]:
        try:
            record = json.loads(self._record(t, index).read_text())
        except FileNotFoundError:
            raise _Damaged("not restored yet") from None
        except (OSError, ValueError) as e:
            raise _Damaged(f"its record is unreadable ({e})") from None
        try:
            f = np.asarray(self.array()[t, index])
        except Exception as e:  # noqa: BLE001 - a truncated or damaged chunk, whatever zarr makes of it
            raise _Damaged(f"its data are unreadable ({type(e).__name__})") from None
        if not isinstance(record, dict) or list(f.shape) != record.get("shape") or f.dtype != np.float32:
            raise _Damaged(f"its data have shape {f.shape} {f.dtype}, not the {record.get('shape') if isinstance(record, dict) else '?'} float32 recorded")
        if not bool(np.all(np.isfinite(f))):
            raise _Damaged("its data hold NaN or infinite values")
        if _sha1(f) != record.get("sha1"):
            raise _Damaged("its data do not match their checksum")
        return f, record

    def save(self, t: int, index: int, f: np.ndarray, iterations: int, relative_gradient: float, result: int) -> None:
        """Save a restored segment: its chunk, then its record (written whole, then renamed)."""
        f = np.ascontiguousarray(f, dtype=np.float32)
        self.array()[t, index] = f
        record = {
            "sha1": _sha1(f), "shape": list(f.shape), "iterations": int(iterations),
            "relative_gradient": float(relative_gradient), "result": int(result),
        }
        with atomic_output(self._record(t, index)) as tmp:
            tmp.write_text(json.dumps(record))

    def load(self, t: int, index: int) -> np.ndarray:
        """A saved segment's restoration, checked; an `EprjaxError` if it is missing or damaged."""
        try:
            return self._verified(t, index)[0]
        except _Damaged as e:
            raise EprjaxError(f"{self.path}: segment {index + 1} of volume {t + 1}: {e}; run again with -resume") from None

    def statistics(self, t: int, index: int) -> tuple[int, float, int]:
        """A saved segment's (iterations, relative gradient, result)."""
        record = json.loads(self._record(t, index).read_text())
        return int(record["iterations"]), float(record["relative_gradient"]), int(record["result"])

    def finished(self) -> int:
        """How many segments have a record (of all volumes)."""
        return sum(1 for _ in (self.path / DONE).glob("t*-s*.json"))

    def manifest(self) -> dict[str, Any] | None:
        try:
            meta = json.loads((self.path / "zarr.json").read_text())
            return meta["attributes"]["eprjax"]
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def matches(self, manifest: dict[str, Any]) -> bool:
        """Whether the store was prepared (`prepare_store`) for a run described by ``manifest``."""
        stored = self.manifest()
        return stored is not None and {k: v for k, v in stored.items() if k != "store_shape"} == _stamped(manifest)

    def claim_path(self, t: int, index: int) -> Path:
        return self.path / CLAIMS / f"t{t:05d}-s{index:06d}"

    def claim(self, t: int, index: int) -> bool:
        """Take segment ``index`` of volume ``t`` on, unless another process has: True if this
        one now holds it (`_create`)."""
        return _create(self.claim_path(t, index), f"{socket.gethostname()} {os.getpid()}\n")

    def claimed(self, t: int, index: int) -> bool:
        return self.claim_path(t, index).exists()

    def take_over(self, t: int, index: int) -> bool:
        """Claim a segment that a dead process claimed and did not finish: one of this host
        whose process is gone, or one of another host whose claim has not been renewed (its
        heartbeat) for `STALE` seconds. True if this process now holds it."""
        path = self.claim_path(t, index)
        try:
            host, pid = path.read_text().split()
            age = time.time() - path.stat().st_mtime
        except (OSError, ValueError):
            return False
        mine = host == socket.gethostname()
        if (mine and (int(pid) == os.getpid() or _alive(int(pid)))) or (not mine and age < STALE):
            return False
        aside = path.with_name(f"{path.name}.{socket.gethostname()}.{os.getpid()}.dead")
        try:
            os.replace(path, aside)  # only one process moves it: the others find it gone
        except OSError:
            return False
        with contextlib.suppress(OSError):
            aside.unlink()
        if self.claim(t, index):
            log.warning("segment %d of volume %d was claimed by process %s on %s, which is gone: restored here", index + 1, t + 1, pid, host)
            return True
        return False


def _create(path: Path, text: str) -> bool:
    """Create ``path`` holding ``text`` unless it exists (an exclusive create, atomic on local
    and NFS v3+ file systems): whether this call created it."""
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        return False
    with os.fdopen(fd, "w") as out:
        out.write(text)
    return True


class _Damaged(Exception):
    pass


def is_store(path: Path) -> bool:
    """Whether ``path`` is a folder eprjax made for its segments (its marker, or the files of
    the first store format and nothing else)."""
    if path.is_symlink() or not path.is_dir():
        return False
    if (path / MARKER).is_file():
        return True
    try:
        legacy = json.loads((path / "manifest.json").read_text()).get("eprjax_store") == 1
    except (OSError, ValueError, AttributeError):
        return False
    return legacy and all(_LEGACY.fullmatch(p.name) and p.is_file() for p in path.iterdir())


def fingerprint(path: str | os.PathLike[str]) -> str:
    """An input's identity by its content, so that a changed input is recognised whatever
    its modification time says. A file: SHA-1 of its size and bytes (whole up to
    `FINGERPRINT_WHOLE`, else `FINGERPRINT_BLOCKS` evenly spaced blocks of 1 MiB). A folder
    (OME-Zarr): of every file's name and size, and the contents of all of them up to
    `FINGERPRINT_WHOLE` in all, else of the metadata and `FINGERPRINT_BLOCKS` evenly spaced
    chunks."""
    if os.path.isdir(path):
        files = sorted((str(f.relative_to(path)), f) for f in iter_files(Path(path)))
        sizes = [f.stat().st_size for _, f in files]
        total = sum(sizes)
        digest = hashlib.sha1(str(total).encode())
        for (name, _), size in zip(files, sizes, strict=True):
            digest.update(f"{name}\0{size}\0".encode())
        if total <= FINGERPRINT_WHOLE:
            chosen = range(len(files))
        else:
            meta = [i for i, (name, _) in enumerate(files) if os.path.basename(name) in (".zarray", ".zattrs", ".zgroup", "zarr.json")]
            spaced = {(len(files) - 1) * k // max(FINGERPRINT_BLOCKS - 1, 1) for k in range(FINGERPRINT_BLOCKS)}
            chosen = sorted(set(meta) | spaced)
        for i in chosen:
            digest.update(files[i][1].read_bytes())
        return f"{total}:{digest.hexdigest()}"
    size = os.path.getsize(path)
    digest = hashlib.sha1(str(size).encode())
    with open(path, "rb") as f:
        if size <= FINGERPRINT_WHOLE:
            for block in iter(lambda: f.read(1 << 24), b""):
                digest.update(block)
        else:
            block = 1 << 20
            for k in range(FINGERPRINT_BLOCKS):
                f.seek((size - block) * k // (FINGERPRINT_BLOCKS - 1))
                digest.update(f.read(block))
    return f"{size}:{digest.hexdigest()}"


class Lock:
    """The hold of one run on a store: ``lock.json`` (host, process, start) created
    exclusively, its modification time renewed every `HEARTBEAT` seconds by a thread. A lock
    whose process is dead (on this host), or whose heartbeat is older than `STALE` seconds
    (on another), is taken over, with a warning."""

    def __init__(self, store: Path) -> None:
        self.path = store / LOCK
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def acquire(self) -> None:
        me = json.dumps({"host": socket.gethostname(), "pid": os.getpid(), "started": time.strftime("%Y-%m-%d %H:%M:%S")})
        for _ in range(3):
            if not _create(self.path, me):
                holder = self._holder()
                if holder is None:
                    continue  # released meanwhile
                owner, age, alive = holder
                if alive:
                    raise ParameterError(
                        f"{self.path.parent}: in use by another run ({owner}, heartbeat {age:.0f} s ago); wait for it to "
                        f"end, or if it is dead, remove {self.path}"
                    )
                log.warning("%s: taking over the lock of a run that is no longer alive (%s)", self.path.parent, owner)
                with contextlib.suppress(FileNotFoundError):
                    self.path.unlink()
                continue
            self._thread = threading.Thread(target=self._beat, name="eprjax-store-heartbeat", daemon=True)
            self._thread.start()
            return
        raise ParameterError(f"{self.path.parent}: could not lock the store ({self.path} keeps changing)")

    def _holder(self) -> tuple[str, float, bool] | None:
        try:
            age = time.time() - self.path.stat().st_mtime
        except FileNotFoundError:
            return None
        try:
            info = json.loads(self.path.read_text())
        except FileNotFoundError:
            return None  # released meanwhile
        except (OSError, ValueError):  # half written or unreadable: no owner to name
            info = {}
        if not isinstance(info, dict):
            info = {}
        host, pid = info.get("host"), info.get("pid")
        owner = f"process {pid} on {host}, since {info.get('started', '?')}"
        if host == socket.gethostname() and isinstance(pid, int):
            return owner, age, _alive(pid)
        return owner, age, age < STALE

    def _beat(self) -> None:
        while not self._stop.wait(HEARTBEAT):
            with contextlib.suppress(OSError):
                os.utime(self.path)

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=1.0)
            self._thread = None
            with contextlib.suppress(OSError):
                self.path.unlink()


def _stamped(manifest: dict[str, Any]) -> dict[str, Any]:
    return {"eprjax_store": STORE_FORMAT, **manifest}


def check_store_path(path: str | os.PathLike[str], inputs: Sequence[str | os.PathLike[str]] = ()) -> Path:
    """``path`` if eprjax may keep a store there: absent, or a store of its own holding none
    of ``inputs``; else a one-line `ParameterError` (eprjax never removes a folder it did
    not make, nor one holding an input)."""
    folder = Path(path)
    if folder.is_symlink():
        raise ParameterError(f"{folder}: is a symbolic link; eprjax keeps its segments in a folder of its own there: remove the link")
    if folder.exists() and not folder.is_dir():
        raise ParameterError(f"{folder}: exists and is not a folder; remove it (eprjax keeps finished segments there)")
    if not folder.exists():
        return folder
    here = folder.resolve()
    for name in inputs:
        inside = Path(name).resolve()
        if inside == here or here in inside.parents:
            raise ParameterError(f"{name}: lies inside {folder}, where eprjax keeps (and then removes) its segments: move it, or write the output elsewhere")
    if not is_store(folder):
        raise ParameterError(f"{folder}: exists and is not an eprjax store; eprjax will not remove it: move it, or write the output elsewhere")
    return folder


def prepare_store(
    path: str | os.PathLike[str], manifest: dict[str, Any], shape: Sequence[int], *, resume: bool,
    inputs: Sequence[str | os.PathLike[str]] = (),
) -> tuple[Store, int, Lock]:
    """The store for a run described by ``manifest`` (JSON values), for segments of
    ``shape`` (volumes, segments, z, y, x), locked by this run; how many intact finished
    segments it keeps; and the lock (release it when the run ends). ``resume``: keep the
    segments of an earlier run with the same manifest (a `ParameterError` naming what
    differs if it is not the same; damaged segments are counted out, to be restored again);
    otherwise an earlier run's segments are discarded. Call from one process only."""
    import zarr

    folder = check_store_path(path, inputs)
    store = Store(folder)
    manifest = _stamped({**manifest, "store_shape": [int(n) for n in shape]})
    lock = Lock(folder)
    if folder.exists():
        lock.acquire()  # before anything in it is read or removed: no other run is using it
    try:
        old = store.manifest()
        if resume and old is not None:
            differ = sorted(k for k in set(old) | set(manifest) if old.get(k) != manifest.get(k))
            if differ:
                shown = "; ".join(f"{k}: {_short(old.get(k))} then, {_short(manifest.get(k))} now" for k in differ[:3])
                raise ParameterError(
                    f"-resume: the segments in {folder} were restored from other inputs or settings ({shown}); "
                    "run without -resume to start again"
                )
            shutil.rmtree(folder / CLAIMS, ignore_errors=True)  # the run that claimed them is over
            (folder / CLAIMS).mkdir()
            kept, damaged = 0, []
            for t in range(int(shape[0])):
                for i in range(int(shape[1])):
                    problem = store.check(t, i)
                    if problem is None:
                        kept += 1
                    elif store._record(t, i).exists():
                        damaged.append(f"segment {i + 1} of volume {t + 1}: {problem}")
                        store._record(t, i).unlink()
            if damaged:
                log.warning("-resume: %d stored segment(s) rejected, to be restored again (%s)", len(damaged), "; ".join(damaged[:3]))
            return store, kept, lock
        if folder.exists():
            lock.release()
            _remove_store(folder)
        folder.mkdir(parents=True)
        with atomic_output(folder / MARKER) as tmp:
            tmp.write_text(json.dumps({"eprjax_store": STORE_FORMAT, "created_by": f"{socket.gethostname()} {os.getpid()}"}))
        lock.acquire()
        (folder / DONE).mkdir()
        (folder / CLAIMS).mkdir()
        group = zarr.open_group(str(folder), mode="a")
        z, y, x = (int(n) for n in shape[2:])
        group.create_array(
            SEGMENTS, shape=tuple(int(n) for n in shape), chunks=(1, 1, z, y, x), dtype="float32", fill_value=np.nan,
            compressors=None, config={"write_empty_chunks": True},
        )
        group.attrs["eprjax"] = manifest
        return store, 0, lock
    except BaseException:
        lock.release()
        raise


def _remove_store(folder: Path) -> None:
    """Remove an eprjax store (checked by `is_store` first: never another folder)."""
    if not is_store(folder):
        raise ParameterError(f"{folder}: is not an eprjax store; eprjax will not remove it")
    shutil.rmtree(folder)


def remove_store(folder: str | os.PathLike[str]) -> None:
    """Remove a finished run's store, if it is one (quietly otherwise)."""
    with contextlib.suppress(OSError, ParameterError):
        _remove_store(Path(folder))


def _short(value: Any) -> str:
    text = json.dumps(value)
    return text if len(text) <= 60 else text[:57] + "..."


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
    """Restore the segments of every volume that the store does not hold yet, claiming
    them as it goes (`Store.claim`: processes sharing the store each take the next free
    ones, so a fast host is not left waiting for a slow one), a chunk (``plan.batch``
    segments on each device) at a time, saving each as it is done. Every chunk has the same
    size (the last is padded), so that one compiled function serves the run. ``share``:
    this process's (index, count), to start each process elsewhere in the volume.
    ``report(finished, total)`` after each chunk, over all processes. ``one(segment,
    volume)``: restore each segment by this instead, one at a time (for progress reports as
    it iterates); it returns (f, iterations, relative gradient, result). ``weigh(segment)``:
    the data term's weights for a segment (None: unweighted). Returns how many segments this
    process restored."""
    grid = make_grid((plan.data_shape[0], *plan.segment), plan.pad, plan.factor)
    pairs = [(t, i) for t in range(source.count) for i in range(plan.count)]
    start = len(pairs) * share[0] // max(share[1], 1)
    todo = [p for p in pairs[start:] + pairs[:start] if not store.recorded(*p)]
    # chunks of one size whatever is left to do (the last padded), as an uninterrupted run has
    # them: a resumed run then uses the same compiled function, and its segments round as
    # that run's would (XLA rounds a product differently with another batch size)
    chunk = 1 if one is not None else min(plan.batch * len(local_devices(devices)), max(1, len(pairs)))
    sy, sx = plan.segment
    restored = 0
    taken: set[tuple[int, int]] = set()  # claims this process took over from dead ones
    beat = _ClaimBeat(store)
    try:
        while True:
            mine: list[tuple[int, int]] = []
            while todo and len(mine) < chunk:
                pair = todo.pop(0)
                if pair in taken or store.claim(*pair):
                    mine.append(pair)
            if not mine:
                # every segment is claimed: those whose process died are taken over; while others
                # are still being restored, wait for them (or for their process to die)
                left = [p for p in pairs if not store.recorded(*p)]
                if not left:
                    break
                todo = [p for p in left if store.take_over(*p)]
                taken.update(todo)
                if not todo:
                    time.sleep(WAIT_FOR_OTHERS)
                    todo = [p for p in left if not store.recorded(*p) and not store.claimed(*p)]
                continue
            beat.hold(mine)
            if one is not None:
                (t, i), = mine
                store.save(t, i, *one(source.region(t, *plan.starts[i], sy, sx), t))
            else:
                f, k, rel, result = _solve_chunk(
                    source, mine, h, alpha, tol, max_iterations, plan=plan, grid=grid, devices=devices, size=chunk,
                    weigh=None if weigh is None else lambda t, i, segment: weigh(segment),
                )
                for j, (t, i) in enumerate(mine):
                    store.save(t, i, f[j], int(k[j]), float(rel[j]), int(result[j]))
                del f
            beat.hold([])
            restored += len(mine)
            if report is not None:
                report(store.finished(), len(pairs))
    finally:
        beat.stop()
    return restored


def _solve_chunk(
    source: Source, mine: list[tuple[int, int]], h: np.ndarray, alpha: float, tol: float, max_iterations: int, *,
    plan: SegmentPlan, grid: Any, devices: int | None, size: int,
    weigh: Callable[[int, int, np.ndarray], np.ndarray] | None,
) -> tuple[np.ndarray, ...]:
    """Restore the segments ``mine`` ((volume, segment) pairs) together, read from
    ``source``; ``weigh(volume, segment, its data)``: their data term's weights (None:
    unweighted). (f, iterations, relative gradient, result), as `solve_segments`."""
    sy, sx = plan.segment
    stacked = np.stack([source.region(t, *plan.starts[i], sy, sx) for t, i in mine])
    weights = None if weigh is None else np.stack([weigh(t, i, segment) for (t, i), segment in zip(mine, stacked, strict=True)])
    return solve_segments(
        stacked, h, alpha, tol, max_iterations, grid=grid, batch=plan.batch, devices=devices, size=size, weights=weights,
    )


def _sha1(f: np.ndarray) -> str:
    """The SHA-1 of an array's bytes in C order, read in place (``tobytes`` would copy it)."""
    return hashlib.sha1(memoryview(np.ascontiguousarray(f)).cast("B")).hexdigest()


class _ClaimBeat:
    """Renews the modification time of the claims a process is restoring, every `HEARTBEAT`
    seconds (a thread), so that other hosts can tell a claim in progress from a dead one's."""

    def __init__(self, store: Store) -> None:
        self._store = store
        self._held: list[tuple[int, int]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="eprjax-claims", daemon=True)
        self._thread.start()

    def hold(self, pairs: list[tuple[int, int]]) -> None:
        self._held = list(pairs)

    def _run(self) -> None:
        while not self._stop.wait(HEARTBEAT):
            for pair in self._held:
                with contextlib.suppress(OSError):
                    os.utime(self._store.claim_path(*pair))

    def stop(self) -> None:
        self._stop.set()


def add_segment(out: Any, lead: tuple[int, ...], fine: SegmentPlan, index: int, f: np.ndarray, total: np.ndarray) -> None:
    """Add restored segment ``index`` (on the fine grid), weighted by its share of
    `weight_total` ``total``, into ``out[lead]`` (any array that takes slice assignment:
    NumPy, a memory map, Zarr)."""
    y, x = fine.starts[index]
    sy, sx = fine.segment
    where = (*lead, slice(None), slice(y, y + sy), slice(x, x + sx))
    out[where] = np.asarray(out[where], dtype=np.float32) + np.asarray(f, np.float32) * _share(fine, index, total)


def _share(fine: SegmentPlan, index: int, total: np.ndarray) -> np.ndarray:
    """Segment ``index``'s (y, x) recomposition weights divided by their sum over the
    volume (``total``, `weight_total`), float32: what of the segment goes into the result."""
    y, x = fine.starts[index]
    sy, sx = fine.segment
    return (weight(fine, index) / total[y : y + sy, x : x + sx]).astype(np.float32)


def restore_streaming(
    source: Source,
    h: np.ndarray,
    *,
    alpha: float,
    tol: float,
    max_iterations: int,
    plan: SegmentPlan,
    out: Any,
    devices: int | None = None,
    weights: Source | None = None,
) -> tuple[int, float, int]:
    """Restore every volume of ``source`` in the segments of ``plan``, a chunk (``plan.batch``
    on each device) at a time, and add each, weighted, into ``out`` (zeros, shaped (T, Z, Y,
    X) on the restoration's grid, or (Z, Y, X) for one volume) as it is done: only a chunk of
    segments is in memory, never the volume. ``weights``: the data term's weights, read
    like the data. Returns (most iterations, largest relative gradient, worst result)."""
    grid = make_grid((plan.data_shape[0], *plan.segment), plan.pad, plan.factor)
    fine = plan.finer()
    total = weight_total(fine)
    pairs = [(t, i) for t in range(source.count) for i in range(plan.count)]
    chunk = min(plan.batch * len(local_devices(devices)), len(pairs))
    sy, sx = plan.segment
    squeeze = len(out.shape) == 3
    most, largest, worst = 0, 0.0, 0
    for start in range(0, len(pairs), chunk):
        mine = pairs[start : start + chunk]
        f, k, rel, result = _solve_chunk(
            source, mine, h, alpha, tol, max_iterations, plan=plan, grid=grid, devices=devices, size=chunk,
            weigh=None if weights is None else lambda t, i, _: weights.region(min(t, weights.count - 1), *plan.starts[i], sy, sx),
        )
        for j, (t, i) in enumerate(mine):
            add_segment(out, () if squeeze else (t,), fine, i, f[j], total)
        most, largest, worst = max(most, int(k.max())), max(largest, float(rel.max())), max(worst, int(result.max()))
        del f
    return most, largest, worst


def assemble(store: Store, plan: SegmentPlan, volumes: int, *, squeeze: bool = False) -> np.memmap:
    """The restored volumes (T, Z, Y, X) on the restoration's grid, recomposed from the
    store's segments into ``restored.f32`` there, a segment at a time; returned read-only
    (memory-mapped; ``squeeze``: one volume as (Z, Y, X)). An `EprjaxError` if a segment is
    missing or damaged (each is checked as it is read)."""
    fine = plan.finer()
    shape = (volumes, *fine.data_shape)
    path = store.path / RESULT
    np.memmap(path, dtype=np.float32, mode="w+", shape=shape).flush()  # zeros, on disk
    total = weight_total(fine)
    with _RawVolume(path, shape) as out:
        for t in range(volumes):
            for i in range(fine.count):
                add_segment(out, (t,), fine, i, store.load(t, i), total)
    return np.memmap(path, dtype=np.float32, mode="r", shape=shape[1:] if squeeze and volumes == 1 else shape)


RESULT_ARRAY = "result"  # with several processes: the recomposed result, one chunk column per tile


def tiles(plan: SegmentPlan) -> list[tuple[int, int]]:
    """The (y, x) starts of the result's tiles: a regular grid of tiles the size of a
    segment (of the fine plan), which are also the result array's chunks in Y and X."""
    fine = plan.finer()
    ty, tx = fine.segment
    return [(y, x) for y in range(0, fine.data_shape[1], ty) for x in range(0, fine.data_shape[2], tx)]


def create_result(store: Store, plan: SegmentPlan, volumes: int) -> None:
    """The store's (empty) result array, (T, Z, Y, X) on the fine grid, in chunks of one
    plane of one tile: a tile is written by one process, a plane read at a time."""
    import zarr  # noqa: PLC0415

    fine = plan.finer()
    zarr.create_array(
        str(store.path / RESULT_ARRAY), shape=(volumes, *fine.data_shape), chunks=(1, 1, *fine.segment),
        dtype=np.float32, fill_value=0.0, compressors=None, overwrite=True,
    )


def recompose_share(store: Store, plan: SegmentPlan, volumes: int, share: tuple[int, int]) -> int:
    """Recompose the tiles of the result this process owns (every ``share[1]``-th, from
    ``share[0]``) into the store's result array, each from the segments that reach it,
    weighted as `assemble` weighs them: the processes of a run recompose in parallel, each
    chunk written by one, and none holds more than a tile and a segment. How many tiles."""
    import zarr  # noqa: PLC0415

    fine = plan.finer()
    out = zarr.open_array(store.path / RESULT_ARRAY, mode="r+")
    total = weight_total(fine)
    sy, sx = fine.segment
    nz, ny, nx = fine.data_shape
    grid = tiles(plan)
    done = 0
    for k in range(volumes * len(grid)):
        if k % share[1] != share[0]:
            continue
        t, j = divmod(k, len(grid))
        y0, x0 = grid[j]
        y1, x1 = min(y0 + sy, ny), min(x0 + sx, nx)
        tile = np.zeros((nz, y1 - y0, x1 - x0), np.float32)
        for i, (y, x) in enumerate(fine.starts):
            a, b, c, d = max(y, y0), min(y + sy, y1), max(x, x0), min(x + sx, x1)
            if a >= b or c >= d:
                continue
            part = (slice(a - y, b - y), slice(c - x, d - x))
            tile[:, a - y0 : b - y0, c - x0 : d - x0] += store.load(t, i)[(slice(None), *part)] * _share(fine, i, total)[part]
        out[t, :, y0:y1, x0:x1] = tile
        done += 1
        release_memory()
    return done


def recomposed(store: Store, volumes: int) -> Any:
    """The store's result array, read a plane at a time (one volume as (Z, Y, X))."""
    import zarr  # noqa: PLC0415

    from ._omezarr import LazyArray  # noqa: PLC0415

    array = zarr.open_array(store.path / RESULT_ARRAY, mode="r")
    return LazyArray(array, {0: 0} if volumes == 1 else {}, str(store.path / RESULT_ARRAY))


class _RawVolume:
    """A float32 (T, Z, Y, X) file, its regions [t, :, y0:y1, x0:x1] read and written row by
    row (pread, pwrite): unlike a memory map, touching a narrow region does not bring in a
    page per row of the file (32 x 174 rows of 4 KiB pages, 22 MiB, for a 3.9 MB segment)."""

    def __init__(self, path: Path, shape: tuple[int, ...]) -> None:
        self.path, self.shape = path, shape
        self.fd = -1

    def __enter__(self) -> _RawVolume:
        self.fd = os.open(self.path, os.O_RDWR)
        return self

    def __exit__(self, *exc: Any) -> None:
        os.fsync(self.fd)
        os.close(self.fd)

    def _rows(self, key: tuple[Any, ...]):
        t, _, ys, xs = key
        _, nz, ny, nx = self.shape
        for z in range(nz):
            for y in range(ys.start, ys.stop):
                yield z, y - ys.start, 4 * (((t * nz + z) * ny + y) * nx + xs.start), xs.stop - xs.start

    def __getitem__(self, key: tuple[Any, ...]) -> np.ndarray:
        _, _, ys, xs = key
        out = np.empty((self.shape[1], ys.stop - ys.start, xs.stop - xs.start), np.float32)
        for z, row, offset, n in self._rows(key):
            out[z, row] = np.frombuffer(os.pread(self.fd, 4 * n, offset), np.float32)
        return out

    def __setitem__(self, key: tuple[Any, ...], value: np.ndarray) -> None:
        for z, row, offset, _ in self._rows(key):
            os.pwrite(self.fd, np.ascontiguousarray(value[z, row], np.float32).tobytes(), offset)


def summary(store: Store, plan: SegmentPlan, volumes: int) -> tuple[int, float, int]:
    """(most iterations, largest relative gradient, worst result) over the stored segments."""
    stats = [store.statistics(t, i) for t in range(volumes) for i in range(plan.count)]
    return max(k for k, _, _ in stats), max(r for _, r, _ in stats), max(x for _, _, x in stats)


def describe_share(share: tuple[int, int], plan: SegmentPlan, volumes: int, devices: Sequence[Any]) -> str:
    who = f"process {share[0] + 1} of {share[1]}: " if share[1] > 1 else ""
    what = "segments" if plan.count > 1 else "volumes"
    claimed = ", claimed as they go" if share[1] > 1 else ""
    return f"{who}{volumes * plan.count} {what}{claimed} on {len(devices)} device(s), {plan.batch} at a time on each"
