"""Micro-Manager acquisitions built here, as Micro-Manager lays them out, found and converted."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import numpy as np
import pytest
import tifffile

import eprjax
from eprjax.cli import mmtoi2i_main

T, Z, C, Y, X = 2, 3, 2, 6, 5


def _stack(position: int) -> np.ndarray:
    """(T, Z, C, Y, X) uint16, every value telling where it is."""
    t, z, c, y, x = np.meshgrid(*(np.arange(n) for n in (T, Z, C, Y, X)), indexing="ij")
    return (40000 + 10000 * position + 1000 * t + 100 * z + 10 * c + y + x).astype(np.uint16)


def make_mmstack(folder: Path, prefix: str = "cells", positions: int = 2) -> None:
    """One OME-TIFF per position, named as Micro-Manager names its image stack files."""
    folder.mkdir(parents=True, exist_ok=True)
    for p in range(positions):
        tifffile.imwrite(
            folder / f"{prefix}_MMStack_Pos{p}.ome.tif",
            _stack(p),
            ome=True,
            photometric="minisblack",
            metadata={
                "axes": "TZCYX",
                "Name": f"Pos{p}",
                "PhysicalSizeX": 0.1,
                "PhysicalSizeY": 0.1,
                "PhysicalSizeZ": 0.3,
                "Channel": {"Name": ["DAPI", "GFP"]},
            },
        )


def make_multifile(folder: Path) -> np.ndarray:
    """A stack continued in a second file (as past 4 GB), tied together by OME UUIDs."""
    folder.mkdir(parents=True, exist_ok=True)
    data = np.arange(T * Z * Y * X, dtype=np.uint16).reshape(T, Z, Y, X)
    ids = [f"urn:uuid:{uuid.uuid4()}" for _ in range(2)]
    names = ["big_MMStack_Pos0.ome.tif", "big_MMStack_Pos0_1.ome.tif"]
    blocks = "".join(
        f'<TiffData FirstT="{t}" FirstZ="0" FirstC="0" IFD="0" PlaneCount="{Z}">'
        f'<UUID FileName="{names[t]}">{ids[t]}</UUID></TiffData>'
        for t in range(T)
    )
    for t in range(T):
        xml = (
            '<?xml version="1.0" encoding="UTF-8"?>'
            f'<OME xmlns="http://www.openmicroscopy.org/Schemas/OME/2016-06" UUID="{ids[t]}">'
            '<Image ID="Image:0" Name="Pos0"><Pixels ID="Pixels:0" DimensionOrder="XYZCT" Type="uint16" '
            f'SizeX="{X}" SizeY="{Y}" SizeZ="{Z}" SizeC="1" SizeT="{T}" PhysicalSizeX="0.065" '
            'PhysicalSizeY="0.065" PhysicalSizeZ="0.2"><Channel ID="Channel:0:0" Name="mCherry" '
            f'SamplesPerPixel="1"/>{blocks}</Pixels></Image></OME>'
        )
        tifffile.imwrite(folder / names[t], data[t], description=xml, metadata=None, photometric="minisblack")
    return data


def make_sequence_14(folder: Path, prefix: str = "seq14", positions: int = 2) -> None:
    """Micro-Manager 1.4 separate image files: Pos<i>/img_<t:9>_<channel>_<z:3>.tif + metadata.txt."""
    for p in range(positions):
        pos = folder / prefix / f"Pos{p}"
        pos.mkdir(parents=True)
        stack = _stack(p)
        meta = {
            "Summary": {"Prefix": prefix, "ChNames": ["DAPI", "GFP"], "Channels": C, "Slices": Z, "Frames": T,
                        "Positions": positions, "PixelSize_um": 0.1, "z-step_um": 0.3, "Width": X, "Height": Y},
        }
        for t in range(T):
            for c, name in enumerate(["DAPI", "GFP"]):
                for z in range(Z):
                    fname = f"img_{t:09d}_{name}_{z:03d}.tif"
                    tifffile.imwrite(pos / fname, stack[t, z, c])
                    meta[f"FrameKey-{t}-{c}-{z}"] = {"FileName": fname, "PositionName": f"Pos{p}"}
        (pos / "metadata.txt").write_text(json.dumps(meta, indent=1))


def make_sequence_20(folder: Path) -> None:
    """Micro-Manager 2.0 separate image files in Default/, pixel size and z only per plane."""
    pos = folder / "seq20" / "Default"
    pos.mkdir(parents=True)
    stack = _stack(0)
    meta = {"Summary": {"Prefix": "seq20", "ChNames": ["DAPI", "GFP"]}}
    for t in range(T):
        for c in range(C):
            for z in range(Z):
                fname = f"img_channel{c:03d}_position000_time{t:09d}_z{z:03d}.tif"
                tifffile.imwrite(pos / fname, stack[t, z, c])
                meta[f"Metadata-Default/{fname}"] = {
                    "PixelSizeUm": 0.0645, "ZPositionUm": 10.0 + 0.25 * z, "SliceIndex": z, "FileName": fname,
                }
    (pos / "metadata.txt").write_text(json.dumps(meta))


def _by_name(found: list[eprjax.Acquisition]) -> dict[str, eprjax.Acquisition]:
    names = [a.output_name for a in found]
    assert len(set(names)) == len(names)
    return dict(zip(names, found, strict=True))


def test_image_stack_files(tmp_path: Path) -> None:
    make_mmstack(tmp_path / "cells")
    found = _by_name(eprjax.find_acquisitions(tmp_path))
    assert sorted(found) == ["cells_Pos0_DAPI", "cells_Pos0_GFP", "cells_Pos1_DAPI", "cells_Pos1_GFP"]
    for p in range(2):
        for c, name in enumerate(["DAPI", "GFP"]):
            acq = found[f"cells_Pos{p}_{name}"]
            assert acq.shape == (T, Z, Y, X) and acq.dtype == np.uint16
            np.testing.assert_allclose(acq.voxel_size_um, (0.3, 0.1, 0.1))
            img = acq.read()
            np.testing.assert_array_equal(np.asarray(img), _stack(p)[:, :, c])
            assert img.voxel_size_um == acq.voxel_size_um


def test_all_positions_in_one_file(tmp_path: Path) -> None:
    """Micro-Manager's option to save every position in one file: one OME image each."""
    with tifffile.TiffWriter(tmp_path / "grid_MMStack_Pos0.ome.tif", ome=True) as tif:
        for p, name in enumerate(["1-Pos_000_000", "1-Pos_000_001"]):
            tif.write(_stack(p), photometric="minisblack", metadata={
                "axes": "TZCYX", "Name": name, "PhysicalSizeX": 0.2, "PhysicalSizeY": 0.2,
                "Channel": {"Name": ["DAPI", "GFP"]}})
    found = _by_name(eprjax.find_acquisitions(tmp_path))
    # "_" separates the parts of a name, so inside a part it becomes "-"
    assert sorted(found) == [f"grid_1-Pos-000-00{p}_{c}" for p in (0, 1) for c in ("DAPI", "GFP")]
    np.testing.assert_array_equal(np.asarray(found["grid_1-Pos-000-001_GFP"].read()), _stack(1)[:, :, 1])
    assert found["grid_1-Pos-000-001_GFP"].voxel_size_um == (None, 0.2, 0.2)


def test_continued_stack_is_one_acquisition(tmp_path: Path) -> None:
    data = make_multifile(tmp_path / "big")
    (acq,) = eprjax.find_acquisitions(tmp_path)
    assert acq.output_name == "big_Pos0_mCherry"
    np.testing.assert_array_equal(np.asarray(acq.read()), data)
    np.testing.assert_allclose(acq.voxel_size_um, (0.2, 0.065, 0.065))


def test_orphan_continuation_is_an_error(tmp_path: Path) -> None:
    make_mmstack(tmp_path, prefix="lone", positions=1)
    (tmp_path / "lone_MMStack_Pos0_1.ome.tif").write_bytes((tmp_path / "lone_MMStack_Pos0.ome.tif").read_bytes())
    with pytest.raises(eprjax.FileFormatError, match="no stack's metadata refers to it"):
        eprjax.find_acquisitions(tmp_path)


def test_separate_image_files_14(tmp_path: Path) -> None:
    make_sequence_14(tmp_path)
    found = _by_name(eprjax.find_acquisitions(tmp_path))
    assert sorted(found) == ["seq14_Pos0_DAPI", "seq14_Pos0_GFP", "seq14_Pos1_DAPI", "seq14_Pos1_GFP"]
    for p in range(2):
        for c, name in enumerate(["DAPI", "GFP"]):
            acq = found[f"seq14_Pos{p}_{name}"]
            np.testing.assert_array_equal(np.asarray(acq.read()), _stack(p)[:, :, c])
            np.testing.assert_allclose(acq.voxel_size_um, (0.3, 0.1, 0.1))


def test_separate_image_files_20(tmp_path: Path) -> None:
    make_sequence_20(tmp_path)
    found = _by_name(eprjax.find_acquisitions(tmp_path))
    assert sorted(found) == ["seq20_Pos0_DAPI", "seq20_Pos0_GFP"]
    np.testing.assert_array_equal(np.asarray(found["seq20_Pos0_GFP"].read()), _stack(0)[:, :, 1])
    np.testing.assert_allclose(found["seq20_Pos0_GFP"].voxel_size_um, (0.25, 0.0645, 0.0645))


def test_stopped_acquisition_keeps_complete_time_points(tmp_path: Path) -> None:
    make_sequence_14(tmp_path, positions=1)
    (tmp_path / "seq14" / "Pos0" / "img_000000001_GFP_002.tif").unlink()
    found = _by_name(eprjax.find_acquisitions(tmp_path))
    assert found["seq14_Pos0_DAPI"].shape == (1, Z, Y, X)
    np.testing.assert_array_equal(np.asarray(found["seq14_Pos0_DAPI"].read()), _stack(0)[0, :, 0])


def test_hole_in_the_middle_is_an_error(tmp_path: Path) -> None:
    make_sequence_14(tmp_path, positions=1)
    (tmp_path / "seq14" / "Pos0" / "img_000000000_GFP_001.tif").unlink()
    with pytest.raises(eprjax.FileFormatError, match="plane missing: time 0, channel GFP, z 1"):
        eprjax.find_acquisitions(tmp_path)


def test_mmtoi2i_converts_everything(workdir: Path) -> None:
    make_mmstack(workdir / "data" / "cells")
    make_sequence_14(workdir / "data")
    make_sequence_20(workdir / "data")
    out = workdir / "out"
    out.mkdir()
    with pytest.raises(SystemExit) as info:
        mmtoi2i_main(["-outdir", str(out), "data"])
    assert info.value.code == 0
    written = sorted(p.name for p in out.iterdir())
    assert written == sorted(
        [f"{a}_Pos{p}_{c}.i2i" for a in ("cells", "seq14") for p in (0, 1) for c in ("DAPI", "GFP")]
        + ["seq20_Pos0_DAPI.i2i", "seq20_Pos0_GFP.i2i"]
    )
    img = eprjax.read(out / "cells_Pos1_GFP.i2i")
    assert img.shape == (T, Z, Y, X) and img.dtype.kind == "f"  # float32 R: lossless
    np.testing.assert_array_equal(np.asarray(img), _stack(1)[:, :, 1])
    np.testing.assert_allclose(img.voxel_size_um, (0.3, 0.1, 0.1))
    assert img.history[0] == f"* mmtoi2i -outdir {out} data"
    assert img.history[1] == "source: cells_MMStack_Pos1.ome.tif position Pos1 channel GFP"
    assert (out / "cells_Pos1_GFP.i2i").read_bytes()[:21] == b"R %5d %5d %5d B" % (X, Y, T * Z)


def test_mmtoi2i_int16_halves_as_the_original(workdir: Path) -> None:
    make_mmstack(workdir / "cells", positions=1)
    with pytest.raises(SystemExit) as info:
        mmtoi2i_main(["-int16", "cells"])
    assert info.value.code == 0
    img = eprjax.read("cells_Pos0_DAPI.i2i")
    assert Path("cells_Pos0_DAPI.i2i").read_bytes()[:1] == b"I"
    np.testing.assert_array_equal(np.asarray(img), _stack(0)[:, :, 0] // 2)
    assert img.history[-1] == "int16: values halved (v // 2)"


def test_mmtoi2i_list(workdir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    make_sequence_20(workdir)
    with pytest.raises(SystemExit) as info:
        mmtoi2i_main(["-list", "."])
    assert info.value.code == 0
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 2 and out[0].startswith("seq20_Pos0_DAPI.i2i\t2x3x6x5 (TZYX) uint16")
    assert not list(workdir.glob("*.i2i"))


def test_mmtoi2i_nothing_found(workdir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (workdir / "empty").mkdir()
    with pytest.raises(SystemExit) as info:
        mmtoi2i_main(["empty"])
    assert info.value.code == 1
    assert capsys.readouterr().err == "mmtoi2i: error: empty: no Micro-Manager acquisition found\n"


def test_tifffile_without_get_axes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """tifffile 2026.9.20 (seen on a GPU machine) has no TiffPageSeries.get_axes/get_shape:
    the squeezed axes serve as well."""
    monkeypatch.delattr(tifffile.TiffPageSeries, "get_axes")
    monkeypatch.delattr(tifffile.TiffPageSeries, "get_shape")
    for name, test in (("stack", test_image_stack_files), ("one_file", test_all_positions_in_one_file)):
        (tmp_path / name).mkdir()
        test(tmp_path / name)
