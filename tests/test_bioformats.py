"""The i2i files we write open in Bio-Formats (its I2IReader) with the right size, type and
values: Bio-Formats converts them to OME-TIFF, which tifffile reads back."""

from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
import pytest
import tifffile

import eprjax

CASES = {
    "float32 big-endian": (np.float32, (3, 5, 7), ">"),
    "int16 little-endian": (np.int16, (4, 6, 5), "<"),
    "float32 3 volumes": (np.float32, (3, 2, 5, 4), ">"),
    "int16 2 volumes": (np.int16, (2, 3, 4, 6), "<"),
}


def _bioformats(java: str, jar: Path, tool: str, *args: str) -> str:
    done = subprocess.run(
        [java, "-cp", str(jar), f"loci.formats.tools.{tool}", "-no-upgrade", *args],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


@pytest.mark.parametrize("case", sorted(CASES))
def test_bioformats_reads_what_we_write(tmp_path: Path, bioformats, case: str) -> None:
    java, jar = bioformats
    dtype, shape, order = CASES[case]
    rng = np.random.default_rng(3)
    data = (rng.normal(size=shape) * 3000).astype(dtype)
    source = eprjax.write(tmp_path / "ours.i2i", data, byteorder=order, history=["* mmtoi2i acq", "* epr -sm 0.0005"])
    converted = tmp_path / "bf.ome.tif"
    _bioformats(java, jar, "ImageConverter", str(source), str(converted))
    with tifffile.TiffFile(converted) as tif:
        series = tif.series[0]
        back = series.asarray()
        axes = series.axes
    want_axes = "TZYX" if len(shape) == 4 else "ZYX"
    assert axes == want_axes
    assert back.dtype == np.dtype(dtype)
    np.testing.assert_array_equal(back, data)


def test_bioformats_sees_sizes_type_and_history(tmp_path: Path, bioformats) -> None:
    java, jar = bioformats
    source = eprjax.write(
        tmp_path / "h.i2i",
        np.zeros((2, 3, 4, 5), np.int16),
        history=["* prepdata -bg_ref 5 5 3 -norm first image.i2i image_prep.i2i"],
        voxel_size_um=(0.25, 0.187, 0.187),
    )
    report = _bioformats(java, jar, "ImageInfo", "-nopix", str(source))
    for line in ("Width = 5", "Height = 4", "SizeZ = 3", "SizeT = 2", "Pixel type = int16", "I2IReader"):
        assert line in report, line
    assert "prepdata -bg_ref 5 5 3" in report
