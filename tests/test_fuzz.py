"""Random and mutated bytes fed to every reader: our own error or a valid image, never a
crash of another kind, never a hang."""

from __future__ import annotations

import contextlib
import io
import signal
from pathlib import Path

import numpy as np
import pytest
import tifffile
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import eprjax

SECONDS_PER_FILE = 10


def _i2i_bytes(tmp: Path, data: np.ndarray, **kwargs) -> bytes:
    return eprjax.write(tmp / "seed.i2i", data, **kwargs).read_bytes()


def _tiff_bytes(**kwargs) -> bytes:
    buffer = io.BytesIO()
    tifffile.imwrite(buffer, **kwargs)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def seeds(tmp_path_factory) -> dict[str, bytes]:
    tmp = tmp_path_factory.mktemp("seeds")
    rng = np.random.default_rng(0)
    return {
        ".i2i": _i2i_bytes(tmp, rng.random((3, 4, 5), np.float32), history=["* a step"], voxel_size_um=(1, 2, 3)),
        "le.i2i": _i2i_bytes(tmp, rng.integers(0, 100, (2, 2, 3, 4)).astype(np.int16), byteorder="<"),
        ".tif": _tiff_bytes(data=rng.random((3, 4, 5), np.float32), imagej=True, metadata={"axes": "ZYX", "spacing": 0.2, "unit": "um"}),
        ".ome.tif": _tiff_bytes(data=rng.integers(0, 9, (2, 3, 4, 5)).astype(np.uint16), ome=True, metadata={"axes": "TZYX", "PhysicalSizeX": 0.1}),
        "z.tif": _tiff_bytes(data=rng.integers(0, 9, (3, 8, 8)).astype(np.uint16), compression="zlib", photometric="minisblack"),
    }


class _Hang(BaseException):
    """Not an Exception, so that no reader's error handling can swallow it."""


@contextlib.contextmanager
def _time_limit(seconds: int):
    def handler(signum, frame):
        raise _Hang(f"no answer within {seconds} s")

    previous = signal.signal(signal.SIGALRM, handler)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def _check(path: Path) -> None:
    with _time_limit(SECONDS_PER_FILE):
        try:
            img = eprjax.read(path)
            with np.errstate(all="ignore"):  # random bytes make any float, whose sum may overflow
                np.asarray(img).sum()  # the pixels really can be read (an OME-Zarr's are read only now)
        except eprjax.EprjaxError as e:
            assert "\n" not in str(e) and str(e)


def _name(kind: str) -> str:
    return "f" + (kind if kind.startswith(".") else kind[kind.index(".") :] if "." in kind else kind)


fuzz_settings = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@fuzz_settings
@given(raw=st.binary(max_size=3000), suffix=st.sampled_from([".i2i", ".tif", ".ome.tif", ""]))
def test_random_bytes(tmp_path: Path, raw: bytes, suffix: str) -> None:
    path = tmp_path / f"random{suffix}"
    path.write_bytes(raw)
    _check(path if suffix else tmp_path / "random")


@fuzz_settings
@given(
    kind=st.sampled_from([".i2i", "le.i2i", ".tif", ".ome.tif", "z.tif"]),
    edits=st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 255)), max_size=8),
    cut=st.one_of(st.none(), st.integers(0, 10**6)),
    tail=st.binary(max_size=64),
)
def test_mutated_files(tmp_path: Path, seeds: dict[str, bytes], kind: str, edits, cut, tail) -> None:
    raw = bytearray(seeds[kind])
    for position, value in edits:
        raw[position % len(raw)] = value
    if cut is not None:
        raw = raw[: cut % (len(raw) + 1)]
    path = tmp_path / _name(kind)
    path.write_bytes(bytes(raw) + tail)
    _check(path)


@fuzz_settings
@given(
    field=st.sampled_from([(2, 8), (8, 14), (14, 20), (21, 31)]),
    text=st.binary(min_size=1, max_size=10),
)
def test_mutated_i2i_header_fields(tmp_path: Path, seeds: dict[str, bytes], field, text: bytes) -> None:
    raw = bytearray(seeds[".i2i"])
    start, end = field
    raw[start:end] = (text * 10)[: end - start]
    path = tmp_path / "h.i2i"
    path.write_bytes(bytes(raw))
    _check(path)


# -- OME-Zarr: folders, so their files are mutated one at a time ------------------------------


@fuzz_settings
@given(
    shape=st.sampled_from([(5, 6), (2, 5, 7), (2, 3, 4, 5)]),
    dtype=st.sampled_from(["uint8", "uint16", "int16", "float32"]),
    version=st.sampled_from(["0.4", "0.5"]),
    voxel=st.tuples(*[st.one_of(st.none(), st.floats(1e-3, 1e3)) for _ in range(3)]),
    pyramid=st.integers(0, 2),
    history=st.lists(st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=126), min_size=1, max_size=30), max_size=3),
)
def test_ome_zarr_round_trips_exactly(tmp_path_factory, shape, dtype, version, voxel, pyramid, history) -> None:
    folder = tmp_path_factory.mktemp("z") / "a.ome.zarr"
    data = np.random.default_rng(0).integers(0, 120, size=shape).astype(dtype)
    image = eprjax.Image(data, voxel_size_um=voxel, history=history)
    eprjax.write(folder, image, ngff=version, pyramid=min(pyramid, 2))
    back = eprjax.read(folder)
    np.testing.assert_array_equal(np.asarray(back.data), data)
    assert back.dtype == data.dtype and back.history == image.history
    expected = image.voxel_size_um if len(shape) > 2 else (None, *image.voxel_size_um[1:])
    assert back.voxel_size_um == pytest.approx(expected)


@pytest.fixture(scope="module")
def ome_zarr_seeds(tmp_path_factory) -> dict[str, Path]:
    tmp = tmp_path_factory.mktemp("zseeds")
    image = eprjax.Image(np.random.default_rng(1).random((2, 6, 7), np.float32), voxel_size_um=(0.3, 0.1, 0.1), history=["* x"])
    return {v: eprjax.write(tmp / f"s{v}.ome.zarr", image, ngff=v, pyramid=1) for v in ("0.4", "0.5")}


def _json_edits():
    """A JSON value put somewhere in a metadata document."""
    leaf = st.one_of(st.none(), st.booleans(), st.integers(-5, 5), st.floats(allow_nan=True), st.text(max_size=5))
    return st.recursive(leaf, lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=5), inner, max_size=3)), max_leaves=6)


def _paths(value, prefix=()):
    yield prefix
    if isinstance(value, dict):
        for k, v in value.items():
            yield from _paths(v, (*prefix, k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from _paths(v, (*prefix, i))


@fuzz_settings
@given(
    version=st.sampled_from(["0.4", "0.5"]),
    which=st.sampled_from(["group", "array", "chunk"]),
    where=st.integers(0, 10**6),
    value=_json_edits(),
    raw=st.one_of(st.none(), st.binary(max_size=40)),
)
def test_mutated_ome_zarr_metadata(tmp_path_factory, ome_zarr_seeds, version, which, where, value, raw) -> None:
    """A value replaced anywhere in the group's or the array's metadata, or that file or a
    chunk replaced by random bytes: our one-line error, or an image whose pixels can be
    read."""
    import json
    import shutil

    folder = tmp_path_factory.mktemp("m") / "a.ome.zarr"
    shutil.copytree(ome_zarr_seeds[version], folder)
    if which == "chunk":
        chunks = sorted(p for p in (folder / "0").rglob("*") if p.is_file() and p.name not in (".zarray", ".zattrs", "zarr.json"))
        target = chunks[where % len(chunks)]
        target.write_bytes(raw if raw is not None else target.read_bytes()[: where % 50])
        _check(folder)
        return
    name = {("0.4", "group"): ".zattrs", ("0.4", "array"): "0/.zarray", ("0.5", "group"): "zarr.json", ("0.5", "array"): "0/zarr.json"}[(version, which)]
    target = folder / name
    if raw is not None:
        target.write_bytes(raw)
    else:
        doc = json.loads(target.read_text())
        paths = list(_paths(doc))
        path = paths[where % len(paths)]
        if not path:
            doc = value
        else:
            parent = doc
            for key in path[:-1]:
                parent = parent[key]
            parent[path[-1]] = value
        target.write_text(json.dumps(doc))
    _check(folder)


# -- the flag parser ---------------------------------------------------------------------------

_VALUES = ["1", "0", "-1", "3", "1e-3", "1e309", "nan", "inf", "abc", "", "auto", "2.5", "99999999999999999999"]
_EPR_FLAGS = ["-psf", "-sm", "-it", "-co", "-pad", "-segment", "-overlap", "-memory", "-noise", "-devices", "-V",
              "-resume", "-size", "-spaced", "-nope", "--help", "-h", "-Z"]


@pytest.fixture(scope="module")
def cli_files(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("cli")
    rng = np.random.default_rng(2)
    eprjax.write(tmp / "vol.i2i", rng.random((4, 8, 9), np.float32) * 100 + 10)
    psf = np.zeros((3, 3, 3), np.float32)
    psf[1, 1, 1], psf[1, 1, 0], psf[1, 0, 1] = 1.0, 0.2, 0.2
    eprjax.write(tmp / "psf.i2i", psf)
    return tmp


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    tokens=st.lists(st.one_of(st.sampled_from(_EPR_FLAGS), st.sampled_from(_VALUES), st.sampled_from(["vol", "psf", "missing", "out", "dir/"])), max_size=9),
    command=st.sampled_from(["epr", "convert", "prepdata", "tune"]),
    valid_start=st.booleans(),
)
def test_random_command_lines_give_our_answer(cli_files: Path, capsys, tokens: list[str], command: str, valid_start: bool) -> None:
    """Any command line: done (0), our one-line error (1: data or files, 2: usage) or the
    help, never an internal error, never a traceback, within a time limit (any command line
    is fair: a valid one restores the tiny volume)."""
    from eprjax.cli import main

    where = {"vol": "vol.i2i", "psf": "psf.i2i", "out": "out.i2i", "missing": "missing.i2i", "dir/": "dir/"}
    if valid_start:  # a command that runs, with random flags after it
        tokens = ["vol", "out", *(["-psf", "psf"] if command in ("epr", "tune") else []), *tokens]
    argv = [command] + [str(cli_files / where[t]) if t in where else t for t in tokens]
    capsys.readouterr()
    with _time_limit(60), pytest.raises(SystemExit) as info:
        main(argv)
    err = capsys.readouterr().err
    assert info.value.code in (0, 1, 2), (argv, info.value.code, err)
    assert "internal error" not in err and "Traceback" not in err, (argv, err)
    if info.value.code and not err.startswith("Usage:"):  # no arguments at all: the help, status 2
        lines = [line for line in err.splitlines() if ": error: " in line]
        assert len(lines) == 1, (argv, err)
    with contextlib.suppress(OSError):
        (cli_files / "out.i2i").unlink()
