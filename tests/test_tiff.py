"""TIFF, ImageJ and OME-TIFF: round trips with voxel sizes, files written by tifffile itself."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tifffile
from hypothesis import given
from hypothesis import strategies as st

import eprjax

DTYPES = [np.uint8, np.uint16, np.int16, np.int32, np.float32, np.float64, np.complex64]
SUFFIXES = [".tif", ".tiff", ".ome.tif", ".ome.tiff"]


def _data(shape: tuple[int, ...], dtype: type, rng: np.random.Generator) -> np.ndarray:
    dtype = np.dtype(dtype)
    if dtype.kind in "ui":
        info = np.iinfo(dtype)
        return rng.integers(info.min, info.max, size=shape, endpoint=True).astype(dtype)
    values = rng.normal(size=shape) * 100
    if dtype.kind == "c":
        values = values + 1j * rng.normal(size=shape)
    return values.astype(dtype)


@given(
    shape=st.sampled_from([(5, 7), (3, 5, 7), (2, 3, 5, 7), (1, 1, 4, 4), (4, 1, 3, 3)]),
    dtype=st.sampled_from(DTYPES),
    suffix=st.sampled_from(SUFFIXES),
    voxel=st.tuples(
        st.one_of(st.none(), st.floats(0.01, 10)), st.floats(0.01, 10), st.floats(0.01, 10)
    ),
    history=st.lists(st.text(st.characters(min_codepoint=32, max_codepoint=126), min_size=1, max_size=90), max_size=4),
    seed=st.integers(0, 2**32 - 1),
)
def test_round_trip(tmp_path_factory, shape, dtype, suffix, voxel, history, seed) -> None:
    data = _data(shape, dtype, np.random.default_rng(seed))
    path = tmp_path_factory.mktemp("tif") / f"img{suffix}"
    eprjax.write(path, data, voxel_size_um=voxel, history=history, origin=(3, -4))
    img = eprjax.read(path)
    # tifffile drops axes of length 1 that it cannot tell apart from absent ones
    np.testing.assert_array_equal(np.asarray(img).reshape(shape), data)
    assert img.dtype.newbyteorder("=") == np.dtype(dtype)
    for got, want in zip(img.voxel_size_um, voxel, strict=True):
        assert (got is None) == (want is None)
        if want is not None:
            np.testing.assert_allclose(got, want, rtol=1e-6)
    assert img.history == eprjax.Image(np.zeros((1, 1)), history=history).history
    assert img.origin == (3, -4)


def test_tif_is_an_imagej_hyperstack_where_imagej_can(tmp_path: Path) -> None:
    data = np.zeros((2, 3, 4, 5), np.uint16)
    path = eprjax.write(tmp_path / "h.tif", data, voxel_size_um=(0.3, 0.1, 0.1))
    with tifffile.TiffFile(path) as tif:
        assert tif.is_imagej and not tif.is_ome
        meta = tif.imagej_metadata
        assert meta["frames"] == 2 and meta["slices"] == 3 and meta["unit"] == "um"
        assert meta["spacing"] == pytest.approx(0.3)
    path = eprjax.write(tmp_path / "d.tif", data.astype(np.float64), voxel_size_um=(0.3, 0.1, 0.1))
    with tifffile.TiffFile(path) as tif:
        assert tif.is_ome  # ImageJ cannot hold float64


def test_ome_metadata_as_written(tmp_path: Path) -> None:
    path = eprjax.write(tmp_path / "o.ome.tif", np.zeros((2, 3, 4, 5), np.float32), voxel_size_um=(0.3, 0.1, 0.2))
    with tifffile.TiffFile(path) as tif:
        xml = tif.ome_metadata
        series = tif.series[0]
        assert series.axes == "TZYX" and series.shape == (2, 3, 4, 5)
    for text in ('PhysicalSizeX="0.2"', 'PhysicalSizeY="0.1"', 'PhysicalSizeZ="0.3"', 'SizeT="2"', 'SizeZ="3"'):
        assert text in xml


@pytest.mark.parametrize(
    ("unit", "scale"), [("nm", 1e-3), ("um", 1.0), ("mm", 1e3), ("\\u00B5m", 1.0), ("micron", 1.0)]
)
def test_reads_imagej_units(tmp_path: Path, unit: str, scale: float) -> None:
    path = tmp_path / "ij.tif"
    tifffile.imwrite(
        path,
        np.zeros((3, 4, 5), np.uint16),
        imagej=True,
        resolution=(1 / 100.0, 1 / 50.0),
        metadata={"spacing": 250.0, "unit": unit, "axes": "ZYX"},
    )
    img = eprjax.read(path)
    np.testing.assert_allclose(img.voxel_size_um, (250 * scale, 50 * scale, 100 * scale), rtol=1e-6)


def test_reads_ome_units(tmp_path: Path) -> None:
    path = tmp_path / "nm.ome.tif"
    tifffile.imwrite(
        path,
        np.zeros((3, 4, 5), np.uint16),
        ome=True,
        metadata={"axes": "ZYX", "PhysicalSizeX": 65.0, "PhysicalSizeXUnit": "nm", "PhysicalSizeY": 65.0,
                  "PhysicalSizeYUnit": "nm", "PhysicalSizeZ": 0.2, "PhysicalSizeZUnit": "µm"},
    )
    np.testing.assert_allclose(eprjax.read(path).voxel_size_um, (0.2, 0.065, 0.065), rtol=1e-9)


def test_plain_tiff_has_no_voxel_size(tmp_path: Path) -> None:
    path = tmp_path / "plain.tif"
    tifffile.imwrite(path, np.arange(60, dtype=np.uint16).reshape(3, 4, 5), photometric="minisblack", metadata=None)
    img = eprjax.read(path)
    assert img.shape == (3, 4, 5) and img.voxel_size_um == (None, None, None)
    np.testing.assert_array_equal(np.asarray(img), np.arange(60).reshape(3, 4, 5))


def test_channels_must_be_chosen(tmp_path: Path) -> None:
    data = np.arange(2 * 3 * 2 * 4 * 5, dtype=np.uint16).reshape(2, 3, 2, 4, 5)  # T Z C Y X
    path = tmp_path / "c.ome.tif"
    tifffile.imwrite(path, data, ome=True, metadata={"axes": "TZCYX"})
    with pytest.raises(eprjax.FileFormatError, match="2 channels"):
        eprjax.read(path)
    for c in (0, 1):
        np.testing.assert_array_equal(np.asarray(eprjax.read(path, channel=c)), data[:, :, c])
    with pytest.raises(eprjax.ParameterError, match="channel 2 does not exist"):
        eprjax.read(path, channel=2)


def test_time_series_of_planes(tmp_path: Path) -> None:
    data = np.arange(3 * 4 * 5, dtype=np.float32).reshape(3, 4, 5)
    path = tmp_path / "t.ome.tif"
    tifffile.imwrite(path, data, ome=True, metadata={"axes": "TYX"})
    img = eprjax.read(path)
    assert img.shape == (3, 1, 4, 5) and img.axes == "TZYX"


def test_compressed_tiff_is_read_into_memory(tmp_path: Path) -> None:
    data = np.arange(3 * 16 * 16, dtype=np.uint16).reshape(3, 16, 16)
    path = tmp_path / "z.tif"
    tifffile.imwrite(path, data, compression="zlib", photometric="minisblack")
    img = eprjax.read(path)
    assert not isinstance(img.data, np.memmap)
    np.testing.assert_array_equal(np.asarray(img), data)


def test_uncompressed_tiff_is_memory_mapped(tmp_path: Path) -> None:
    path = eprjax.write(tmp_path / "m.tif", np.ones((3, 16, 16), np.float32))
    assert isinstance(eprjax.read(path).data, np.memmap)


def test_rgb_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "rgb.tif"
    tifffile.imwrite(path, np.zeros((8, 8, 3), np.uint8), photometric="rgb")
    with pytest.raises(eprjax.FileFormatError, match="3 channels"):
        eprjax.read(path)


def test_shared_measured_psf(shared_data: Path) -> None:
    img = eprjax.read(shared_data / "pycudadecon" / "psf.tif")
    assert img.shape == (61, 128, 128) and img.dtype == np.uint16
    data = np.asarray(img)
    assert data.min() == 59 and data.max() == 7792
    assert np.unravel_index(np.argmax(data), data.shape) == (30, 71, 64)


def test_shared_flowdec_and_redlionfish(shared_data: Path) -> None:
    bars = eprjax.read(shared_data / "flowdec" / "bars-25pct" / "actual.tif")
    assert bars.shape == (32, 64, 64) and bars.dtype == np.float32
    rlf = eprjax.read(shared_data / "redlionfish" / "PSF_RFI_8bit.tif")
    assert rlf.shape == (61, 32, 32) and rlf.dtype == np.uint8
    assert np.unravel_index(np.argmax(np.asarray(rlf)), rlf.shape) == (30, 15, 15)
