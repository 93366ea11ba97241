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
        except eprjax.EprjaxError as e:
            assert "\n" not in str(e) and str(e)
            return
        np.asarray(img).sum()  # the pixels really can be read


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
