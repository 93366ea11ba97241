"""i2i: hand-made files read right, our files match the description, bad files fail clearly."""

from __future__ import annotations

import os
import struct
import time
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import eprjax
from eprjax._i2i import HISTORY_LINES, HISTORY_WIDTH, history_lines, split_history

UNSET = b"  "


def handmade(
    kind: str,
    shape_xyz: tuple[int, int, int],
    order: str,
    *,
    fields: tuple[int | None, ...] = (0, 0, 0, 0, 1),
    history: list[str] = (),
    dims_text: tuple[bytes, bytes, bytes] | None = None,
) -> bytes:
    """An i2i header built from the format's description alone: None in ``fields`` (min, max,
    x origin, y origin, volumes) writes the two spaces that mean "unset"."""
    nx, ny, nz = shape_xyz
    head = bytearray(b" " * 1024)
    head[0:1] = kind.encode()
    head[1:2] = b" "
    dims = dims_text or tuple(f"{n:<6d}".encode() for n in (nx, ny, nz))  # left-aligned on purpose
    head[2:8], head[8:14], head[14:20] = dims
    head[20:21] = b"B" if order == ">" else b"L"
    for i, value in enumerate(fields):
        head[21 + 2 * i : 23 + 2 * i] = UNSET if value is None else struct.pack(order + "h", value)
    for i, line in enumerate(history):
        head[64 + 64 * i : 64 + 64 * i + len(line)] = line.encode()
    return bytes(head)


DTYPES = {"I": "i2", "R": "f4", "C": "c8"}


@pytest.mark.parametrize("kind", ["I", "R", "C"])
@pytest.mark.parametrize("order", [">", "<"])
@pytest.mark.parametrize("volumes", [1, 3])
def test_reads_handmade_files(tmp_path: Path, kind: str, order: str, volumes: int) -> None:
    nx, ny, nz = 5, 4, 2 * volumes
    rng = np.random.default_rng(0)
    values = rng.normal(size=(nz, ny, nx)) * 1000
    if kind == "C":
        values = values + 1j * rng.normal(size=values.shape)
    expected = values.astype(order + DTYPES[kind])
    history = ["* preppsf -NA 1.4 -n 1.515", "* prepdata -bg_ref 5 5 3"]
    path = tmp_path / "cell.i2i"
    path.write_bytes(
        handmade(kind, (nx, ny, nz), order, fields=(-7, 900, 12, -3, volumes), history=history)
        + expected.tobytes()
    )
    img = eprjax.read(path)
    want = expected.reshape((volumes, nz // volumes, ny, nx)) if volumes > 1 else expected
    assert img.shape == want.shape
    assert img.dtype.kind == {"I": "i", "R": "f", "C": "c"}[kind]
    np.testing.assert_array_equal(np.asarray(img), want)
    assert img.history == tuple(history)
    assert img.origin == (-3, 12)
    assert img.voxel_size_um == (None, None, None)


def test_unset_fields_mean_one_volume_and_zero(tmp_path: Path) -> None:
    path = tmp_path / "unset.i2i"
    data = np.arange(6 * 2 * 3, dtype=">i2")
    path.write_bytes(handmade("I", (3, 2, 6), ">", fields=(None,) * 5) + data.tobytes())
    img = eprjax.read(path)
    assert img.shape == (6, 2, 3)  # T unset: one volume of six planes
    assert img.origin == (0, 0)


def test_volumes_below_one_mean_one(tmp_path: Path) -> None:
    path = tmp_path / "zero.i2i"
    data = np.ones((4, 2, 3), ">f4")
    for t in (0, -5):
        path.write_bytes(handmade("R", (3, 2, 4), ">", fields=(0, 1, 0, 0, t)) + data.tobytes())
        assert eprjax.read(path).shape == (4, 2, 3)


def test_right_aligned_and_six_digit_sizes(tmp_path: Path) -> None:
    path = tmp_path / "wide.i2i"
    dims = (b"    3 ", b"100000", b"     1")
    data = np.zeros((1, 100000, 3), "<f4")
    path.write_bytes(handmade("R", (3, 100000, 1), "<", dims_text=dims) + data.tobytes())
    assert eprjax.read(path).shape == (1, 100000, 3)


def test_reading_is_memory_mapped_and_read_only(tmp_path: Path) -> None:
    """A 10 GB file opens at once: nothing is read until used, and it cannot be changed."""
    path = tmp_path / "huge.i2i"
    nx, ny, nz = 2048, 2048, 640  # 10 GiB of float32
    with open(path, "wb") as f:
        f.write(handmade("R", (nx, ny, nz), ">"))
        f.truncate(1024 + nx * ny * nz * 4)  # sparse: no disk used
    start = time.perf_counter()
    img = eprjax.read(path)
    elapsed = time.perf_counter() - start
    assert img.shape == (nz, ny, nx)
    assert elapsed < 1.0, f"opening took {elapsed:.2f} s"
    assert isinstance(img.data, np.memmap)
    assert float(img.data[nz // 2, 7, 9]) == 0.0
    with pytest.raises(ValueError):
        img.data[0, 0, 0] = 1.0


def test_header_as_bigs_writer_has_it(tmp_path: Path) -> None:
    path = eprjax.write(tmp_path / "a.i2i", np.full((3, 4, 5), 2.5, np.float32))
    raw = path.read_bytes()
    assert raw[:21] == b"R %5d %5d %5d B" % (5, 4, 3)
    assert struct.unpack(">5h", raw[21:31]) == (2, 2, 0, 0, 1)  # min, max (rounded), origins, T
    assert raw[31:64] == b" " * 33
    assert raw[64:1024] == b" " * 960  # no history, no voxel size: all spaces
    assert len(raw) == 1024 + 3 * 4 * 5 * 4
    np.testing.assert_array_equal(np.frombuffer(raw[1024:], ">f4"), 2.5)


def test_little_endian_and_volumes(tmp_path: Path) -> None:
    data = np.arange(2 * 3 * 4 * 5, dtype=np.int16).reshape(2, 3, 4, 5)
    path = eprjax.write(tmp_path / "v.i2i", data, byteorder="<", origin=(7, -2))
    raw = path.read_bytes()
    assert raw[:21] == b"I     5     4     6 L"
    assert struct.unpack("<5h", raw[21:31]) == (0, 119, -2, 7, 2)
    np.testing.assert_array_equal(np.frombuffer(raw[1024:], "<i2").reshape(2, 3, 4, 5), data)


def test_names_without_extension_mean_i2i(workdir: Path) -> None:
    written = eprjax.write("mycell_", np.ones((2, 3, 4), np.float32))
    assert written == Path("mycell_.i2i") and written.exists()
    assert eprjax.read("mycell_").shape == (2, 3, 4)
    # an i2i file without the ending, as old scripts may have left
    Path("bare").write_bytes(Path("mycell_.i2i").read_bytes())
    assert eprjax.read("bare").shape == (2, 3, 4)


def test_dtypes_written(tmp_path: Path) -> None:
    cases = {
        np.int16: ("I", np.int16),
        np.uint16: ("R", np.float32),
        np.uint8: ("R", np.float32),
        np.float64: ("R", np.float32),
        np.int32: ("R", np.float32),
        np.complex128: ("C", np.complex64),
        np.bool_: ("R", np.float32),
    }
    for dtype, (kind, stored) in cases.items():
        data = (np.arange(24).reshape(2, 3, 4) % 2).astype(dtype)
        path = eprjax.write(tmp_path / f"{np.dtype(dtype).name}.i2i", data)
        assert path.read_bytes()[:1] == kind.encode()
        img = eprjax.read(path)
        assert img.dtype.newbyteorder("=") == np.dtype(stored)
        np.testing.assert_array_equal(np.asarray(img), data.astype(stored))


# -- the history --------------------------------------------------------------------------


def test_history_is_kept_and_a_line_appended(tmp_path: Path) -> None:
    first = eprjax.write(tmp_path / "a.i2i", np.zeros((2, 2, 2), np.float32), history=["* mmtoi2i acq"])
    img = eprjax.read(first).add_history("* preppsf -NA 1.4 -n 1.515 -size 0.187 -spaced 0.25 -norm infocus -mask 1 psf.i2i psf_prep.i2i")
    second = eprjax.write(tmp_path / "b.i2i", img)
    back = eprjax.read(second)
    assert back.history == img.history
    lines = [second.read_bytes()[64 + 64 * i : 128 + 64 * i].decode().rstrip() for i in range(15)]
    assert lines[0] == "* mmtoi2i acq"
    assert lines[1].startswith("* preppsf -NA 1.4") and len(lines[1]) <= 64
    assert lines[2].startswith("  ")  # continued on the next line, broken at a space


def test_history_keeps_the_newest_entries_and_the_voxel_size() -> None:
    entries = tuple(f"* step {i} " + "x" * 40 for i in range(30))
    lines = history_lines(entries, (0.25, 0.1, 0.1))
    assert len(lines) == HISTORY_LINES
    assert all(len(line) <= HISTORY_WIDTH for line in lines)
    kept, voxel = split_history(lines)
    assert voxel == (0.25, 0.1, 0.1)
    assert kept == entries[-14:]


def test_history_entry_too_long_for_the_header_is_cut() -> None:
    entry = "* " + " ".join(f"word{i}" for i in range(400))
    lines = history_lines((entry,), (None, None, None))
    assert len(lines) == HISTORY_LINES
    (kept,), _ = split_history(lines)
    assert entry.startswith(kept)


history_text = st.text(
    alphabet=st.characters(min_codepoint=32, max_codepoint=126), min_size=1, max_size=200
).filter(lambda s: s.strip())


@given(st.lists(history_text, max_size=6), st.lists(st.one_of(st.none(), st.floats(1e-4, 1e3)), min_size=3, max_size=3))
def test_history_lines_round_trip(entries: list[str], voxel: list[float | None]) -> None:
    clean = eprjax.Image(np.zeros((1, 1)), history=entries).history
    lines = history_lines(clean, tuple(voxel))
    assert len(lines) <= HISTORY_LINES and all(len(x) <= HISTORY_WIDTH for x in lines)
    kept, back = split_history(lines)
    if sum(len(_wrap_count(e)) for e in clean) + (voxel != [None] * 3) <= HISTORY_LINES:
        assert kept == clean
    np.testing.assert_allclose([np.nan if v is None else v for v in back], [np.nan if v is None else v for v in voxel], rtol=1e-6)


def _wrap_count(entry: str) -> list[str]:
    from eprjax._i2i import _wrap

    return _wrap(entry)


# -- round trips --------------------------------------------------------------------------

shapes = st.tuples(st.integers(1, 3), st.integers(1, 4), st.integers(1, 6), st.integers(1, 7))


@given(
    shape=shapes,
    kind=st.sampled_from(["I", "R", "C"]),
    order=st.sampled_from([">", "<"]),
    history=st.lists(history_text, max_size=3),
    voxel=st.tuples(st.floats(0.01, 10), st.floats(0.01, 10), st.floats(0.01, 10)),
    origin=st.tuples(st.integers(-32768, 8223), st.integers(8225, 32767)),
    seed=st.integers(0, 2**32 - 1),
)
def test_round_trip(tmp_path_factory, shape, kind, order, history, voxel, origin, seed) -> None:
    rng = np.random.default_rng(seed)
    t, z, y, x = shape
    data = rng.integers(-32768, 32768, size=shape).astype(np.int16) if kind == "I" else rng.normal(size=shape) * 1e3
    if kind == "C":
        data = data + 1j * rng.normal(size=shape)
    data = data.astype(DTYPES[kind])
    path = tmp_path_factory.mktemp("rt") / "x.i2i"
    eprjax.write(path, data, history=history, voxel_size_um=voxel, origin=origin, byteorder=order)
    img = eprjax.read(path)
    want = data if t > 1 else data[0]
    assert img.shape == want.shape
    np.testing.assert_array_equal(np.asarray(img), want)
    assert img.history == eprjax.Image(np.zeros((1, 1)), history=history).history
    np.testing.assert_allclose(img.voxel_size_um, voxel, rtol=1e-6)
    assert img.origin == origin


def test_two_dimensional_data_become_one_plane(tmp_path: Path) -> None:
    data = np.arange(12, dtype=np.float32).reshape(3, 4)
    img = eprjax.read(eprjax.write(tmp_path / "p.i2i", data))
    assert img.shape == (1, 3, 4)
    np.testing.assert_array_equal(np.asarray(img)[0], data)


# -- int16 on request ---------------------------------------------------------------------


def test_int16_clip_never_wraps(tmp_path: Path) -> None:
    data = np.array([[[-40000.0, -1.5, 0.4, 2.5, 32767.4, 40000.0]]], np.float32)
    img = eprjax.read(eprjax.write(tmp_path / "c.i2i", data, int16="clip"))
    assert img.dtype.kind == "i" and img.dtype.itemsize == 2
    np.testing.assert_array_equal(np.asarray(img), [[[-32768, -2, 0, 2, 32767, 32767]]])
    assert img.history[-1] == "int16: values rounded, 2 of 6 clipped to -32768..32767"


def test_int16_scale_records_the_factor(tmp_path: Path) -> None:
    data = np.array([[[0.0, 0.25, -0.5, 1.0]]], np.float32)
    img = eprjax.read(eprjax.write(tmp_path / "s.i2i", data, int16="scale"))
    np.testing.assert_array_equal(np.asarray(img), [[[0, 8192, -16384, 32767]]])
    factor = float(img.history[-1].split("multiplied by ")[1].split()[0])
    np.testing.assert_allclose(np.asarray(img) / factor, data, atol=0.5 / factor)


def test_int16_auto_halves_uint16_only(tmp_path: Path) -> None:
    u16 = np.array([[[0, 1, 2, 3, 65535]]], np.uint16)
    img = eprjax.read(eprjax.write(tmp_path / "h.i2i", u16, int16="auto"))
    np.testing.assert_array_equal(np.asarray(img), [[[0, 0, 1, 1, 32767]]])
    assert img.history[-1] == "int16: values halved (v // 2)"
    u8 = np.array([[[0, 255]]], np.uint8)
    img = eprjax.read(eprjax.write(tmp_path / "b.i2i", u8, int16="auto"))
    np.testing.assert_array_equal(np.asarray(img), [[[0, 255]]])
    assert img.history == ()


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_int16_refuses_values_it_cannot_hold(tmp_path: Path, bad: float) -> None:
    data = np.array([[[1.0, bad]]], np.float32)
    with pytest.raises(eprjax.ParameterError, match="NaN or infinite"):
        eprjax.write(tmp_path / "n.i2i", data, int16="clip")
    assert list(tmp_path.iterdir()) == []


def test_int16_mode_is_checked(tmp_path: Path) -> None:
    with pytest.raises(eprjax.ParameterError, match="int16 must be one of"):
        eprjax.write(tmp_path / "m.i2i", np.zeros((1, 2, 2)), int16="wrap")
    with pytest.raises(eprjax.ParameterError, match="needs integer data"):
        eprjax.write(tmp_path / "m.i2i", np.zeros((1, 2, 2)), int16="halve")


# -- bad files ----------------------------------------------------------------------------


def _good(kind: str = "R") -> bytes:
    return handmade(kind, (5, 4, 3), ">") + np.zeros((3, 4, 5), ">" + DTYPES[kind]).tobytes()


MALFORMED = {
    "empty": (b"", "the file is empty"),
    "short header": (_good()[:500], "truncated i2i header: 500 bytes"),
    "truncated data": (_good()[:-7], "truncated: the header describes 5 x 4 x 3 type R pixels"),
    "too long": (_good() + b"\0" * 4, "longer than its header says"),
    "sizes disagree": (handmade("R", (5, 4, 9), ">") + np.zeros(60, ">f4").tobytes(), "5 x 4 x 9"),
    "non-numeric size": (handmade("R", (5, 4, 3), ">", dims_text=(b"  5   ", b"  4x  ", b"  3   ")) + bytes(240), "the Y size"),
    "zero size": (handmade("R", (5, 0, 3), ">") + bytes(0), "the Y size is 0"),
    "unknown type": (b"Q" + _good()[1:], "pixel type byte is b'Q', expected I, R or C"),
    "no space": (b"RX" + _good()[2:], "byte 1 is b'X'"),
    "bad byte order": (_good()[:20] + b"X" + _good()[21:], "byte order (byte 20) is b'X'"),
    "volumes do not divide": (handmade("R", (5, 4, 3), ">", fields=(0, 0, 0, 0, 2)) + bytes(240), "3 planes cannot be split into 2 volumes"),
    "a TIFF under the i2i name": (b"II*\x00" + bytes(2000), "not an i2i file"),
}


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_malformed_files_fail_clearly(tmp_path: Path, case: str) -> None:
    raw, message = MALFORMED[case]
    path = tmp_path / "bad.i2i"
    path.write_bytes(raw)
    with pytest.raises(eprjax.FileFormatError) as info:
        eprjax.read(path)
    text = str(info.value)
    assert str(path) in text and message in text
    assert "\n" not in text


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(eprjax.MissingFileError, match="nothere.i2i: no such file"):
        eprjax.read(tmp_path / "nothere")
    with pytest.raises(eprjax.FileFormatError, match="is a directory"):
        eprjax.read(tmp_path / "d.i2i") if (tmp_path / "d.i2i").mkdir() is None else None


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs here")
@pytest.mark.parametrize("name", ["pipe.i2i", "pipe.tif"])
def test_a_fifo_is_refused_not_waited_on(tmp_path: Path, name: str) -> None:
    """Opening a FIFO with no writer blocks for ever; it is refused before that."""
    os.mkfifo(tmp_path / name)
    started = time.perf_counter()
    with pytest.raises(eprjax.FileFormatError, match="not a regular file"):
        eprjax.read(tmp_path / name)
    assert time.perf_counter() - started < 5


# -- writing whole or not at all ----------------------------------------------------------


class _Failing(np.ndarray):
    """An array whose planes fail to load after the first (like a disk error mid-write)."""

    def __getitem__(self, index):
        if isinstance(index, tuple) and index and index[0] == 1:
            raise self.error
        return super().__getitem__(index)


@pytest.mark.parametrize("error", [OSError("disk on fire"), KeyboardInterrupt()])
@pytest.mark.parametrize("name", ["out.i2i", "out.tif", "out.ome.tif"])
def test_failed_write_leaves_nothing(tmp_path: Path, error: BaseException, name: str) -> None:
    data = np.zeros((3, 8, 8), np.float32).view(_Failing)
    data.error = error
    target = tmp_path / name
    expected = KeyboardInterrupt if isinstance(error, KeyboardInterrupt) else eprjax.EprjaxError
    with pytest.raises(expected):
        eprjax.write(target, data)
    assert list(tmp_path.iterdir()) == []


def test_failed_write_keeps_the_old_file(tmp_path: Path) -> None:
    target = eprjax.write(tmp_path / "keep.i2i", np.ones((2, 2, 2), np.float32))
    before = target.read_bytes()
    data = np.zeros((3, 8, 8), np.float32).view(_Failing)
    data.error = OSError("disk full")
    with pytest.raises(eprjax.EprjaxError, match="keep.i2i: cannot write \\(disk full\\)"):
        eprjax.write(target, data)
    assert target.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keep.i2i"]


def test_a_killed_writers_temporary_file_is_removed_by_the_next_write(tmp_path: Path) -> None:
    """A run killed while writing leaves ``.NAME.HOST.PID.*.part``; the next write of that
    file removes it when PID is dead on this host, and leaves those of live processes and
    other hosts alone."""
    import subprocess
    import sys

    from eprjax._io import _HOST

    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    dead = tmp_path / f".out.i2i.{_HOST}.{gone.pid}.0123abcd.part"
    live = tmp_path / f".out.i2i.{_HOST}.{os.getppid()}.0123abcd.part"
    other = tmp_path / f".out.i2i.elsewhere.{gone.pid}.0123abcd.part"
    unrelated = tmp_path / f".other.i2i.{_HOST}.{gone.pid}.0123abcd.part"
    for p in (dead, live, other, unrelated):
        p.write_bytes(b"half")
    eprjax.write(tmp_path / "out.i2i", np.zeros((2, 3, 4), np.float32))
    assert not dead.exists() and live.exists() and other.exists() and unrelated.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(p.name for p in (live, other, unrelated)) + ["out.i2i"]


def test_rewriting_the_file_being_read_is_safe(tmp_path: Path) -> None:
    """The output replaces the name; a memory map of the old file still sees the old data."""
    path = eprjax.write(tmp_path / "self.i2i", np.arange(8, dtype=np.float32).reshape(2, 2, 2))
    img = eprjax.read(path)
    eprjax.write(path, np.asarray(img) * 2)
    np.testing.assert_array_equal(np.asarray(eprjax.read(path)), np.arange(8).reshape(2, 2, 2) * 2)


def test_write_errors_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(eprjax.ParameterError, match="does not exist"):
        eprjax.write(tmp_path / "no" / "dir.i2i", np.zeros((1, 2, 2)))
    with pytest.raises(eprjax.ParameterError, match="axes"):
        eprjax.write(tmp_path / "x.i2i", np.zeros((2, 2, 2, 2, 2)))
    with pytest.raises(eprjax.ParameterError, match="unsupported file type '.png'"):
        eprjax.write(tmp_path / "x.png", np.zeros((2, 2)))
    with pytest.raises(eprjax.ParameterError, match="origin"):
        eprjax.write(tmp_path / "x.i2i", np.zeros((2, 2)), origin=(0, 40000))
    assert sorted(os.listdir(tmp_path)) == []
