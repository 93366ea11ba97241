"""OME-Zarr in and out: round trips in NGFF 0.4 and 0.5, the metadata checked by an
independent validator (ome-zarr-models) and read by the reader napari's plugin uses
(ome-zarr-py), images other writers made, damaged folders, and the folder replaced whole or
not at all."""

from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest

import eprjax
from eprjax import _omezarr
from eprjax._io import atomic_output

from .conftest import run_eprjax
from .test_restore import blurred, gaussian_psf, scene

zarr = pytest.importorskip("zarr")


def _image(shape, dtype=np.float32, seed=0) -> eprjax.Image:
    rng = np.random.default_rng(seed)
    data = (rng.uniform(0, 1000, size=shape)).astype(dtype)
    return eprjax.Image(data, voxel_size_um=(0.3, 0.1, 0.12), history=["* made by a test", "step two"], origin=(5, 7))


@pytest.mark.parametrize("version", ["0.4", "0.5"])
@pytest.mark.parametrize(("shape", "dtype"), [((40, 33), np.uint16), ((9, 70, 50), np.float32), ((2, 5, 30, 41), np.int16)])
def test_round_trip(tmp_path: Path, version: str, shape, dtype) -> None:
    image = _image(shape, dtype)
    path = eprjax.write(tmp_path / "a.ome.zarr", image, ngff=version)
    back = eprjax.read(path)
    assert back.shape == shape and back.dtype == dtype
    np.testing.assert_array_equal(np.asarray(back.data), image.data)
    if len(shape) > 2:
        assert back.voxel_size_um == pytest.approx(image.voxel_size_um)
    else:  # a plane has no Z step
        assert back.voxel_size_um[0] is None and back.voxel_size_um[1:] == pytest.approx((0.1, 0.12))
    assert back.history == image.history and back.origin == image.origin
    # the Zarr format each version prescribes
    assert (path / (".zgroup" if version == "0.4" else "zarr.json")).is_file()


@pytest.mark.parametrize("version", ["0.4", "0.5"])
def test_the_metadata_pass_an_independent_validator(tmp_path: Path, version: str) -> None:
    models = pytest.importorskip(f"ome_zarr_models.v0{version[-1]}")
    path = eprjax.write(tmp_path / "a.ome.zarr", _image((2, 6, 64, 48)), ngff=version, pyramid=2)
    model = models.Image.from_zarr(zarr.open_group(str(path), mode="r"))
    multiscale = model.attributes.multiscales[0] if version == "0.4" else model.attributes.ome.multiscales[0]
    assert [a.name for a in multiscale.axes] == ["t", "z", "y", "x"]
    assert [a.unit for a in multiscale.axes] == [None, "micrometer", "micrometer", "micrometer"]
    scales = [d.coordinateTransformations[0].scale for d in multiscale.datasets]
    assert scales == [pytest.approx([1, 0.3, 0.1 * 2**k, 0.12 * 2**k]) for k in range(3)]
    if version == "0.4":  # NGFF 0.4 asks for "/" between chunk indices
        assert json.loads((path / "0" / ".zarray").read_text())["dimension_separator"] == "/"
    else:  # 0.5: the axes' names are the arrays' dimension names too
        assert json.loads((path / "0" / "zarr.json").read_text())["dimension_names"] == ["t", "z", "y", "x"]


@pytest.mark.parametrize("version", ["0.4", "0.5"])
def test_napari_s_reader_sees_the_voxel_scale(tmp_path: Path, version: str) -> None:
    """ome-zarr-py's reader, which napari-ome-zarr uses to open a folder in napari."""
    pytest.importorskip("ome_zarr")
    from ome_zarr.io import parse_url
    from ome_zarr.reader import Reader

    path = eprjax.write(tmp_path / "a.ome.zarr", _image((6, 64, 48)), ngff=version, pyramid=1)
    node = next(iter(Reader(parse_url(str(path)))()))
    assert [tuple(d.shape) for d in node.data] == [(6, 64, 48), (6, 32, 24)]
    assert node.metadata["coordinateTransformations"][0][0]["scale"] == pytest.approx([0.3, 0.1, 0.12])
    np.testing.assert_array_equal(np.asarray(node.data[0]), eprjax.read(path).data)


def test_pyramid_levels_are_block_means(tmp_path: Path) -> None:
    image = _image((3, 37, 22))  # an odd side: its last row is averaged with itself
    path = eprjax.write(tmp_path / "a.ome.zarr", image, pyramid=2)
    data = image.data.astype(np.float64)
    padded = np.pad(data, ((0, 0), (0, 1), (0, 0)), mode="edge")
    one = padded.reshape(3, 19, 2, 11, 2).mean(axis=(2, 4))
    np.testing.assert_allclose(zarr.open_array(str(path / "1"), mode="r")[:], one, rtol=1e-6)
    level2 = zarr.open_array(str(path / "2"), mode="r")[:]
    p = np.pad(one, ((0, 0), (0, 1), (0, 1)), mode="edge")
    np.testing.assert_allclose(level2, p.reshape(3, 10, 2, 6, 2).mean(axis=(2, 4)), rtol=1e-6)
    attrs = json.loads((path / ".zattrs").read_text())["multiscales"][0]["datasets"]
    # a level-1 pixel's centre lies half a full-resolution pixel in; level 2's 1.5 pixels
    assert attrs[1]["coordinateTransformations"][1]["translation"] == pytest.approx([0, 0.05, 0.06])
    assert attrs[2]["coordinateTransformations"][1]["translation"] == pytest.approx([0, 0.15, 0.18])
    with pytest.raises(eprjax.ParameterError, match="below one pixel"):
        eprjax.write(tmp_path / "b.ome.zarr", image, pyramid=7)
    with pytest.raises(eprjax.ParameterError, match="only into OME-Zarr"):
        eprjax.write(tmp_path / "b.tif", image, pyramid=1)


def test_an_unknown_voxel_size_stays_unknown(tmp_path: Path) -> None:
    path = eprjax.write(tmp_path / "a.ome.zarr", eprjax.Image(np.ones((2, 4, 4), np.float32), voxel_size_um=(None, 0.2, 0.2)))
    axes = json.loads((path / ".zattrs").read_text())["multiscales"][0]["axes"]
    assert "unit" not in axes[0] and axes[1]["unit"] == "micrometer"
    assert eprjax.read(path).voxel_size_um == (None, 0.2, 0.2)


def test_written_a_chunk_at_a_time(tmp_path: Path) -> None:
    """The writer holds a chunk's depth of planes, not the volume: the first slab is on disk
    before the planes after it are asked for."""
    from eprjax._omezarr import write_ome_zarr

    image = eprjax.Image(np.zeros((20, 600, 600), np.float32))
    depth = _omezarr._chunks(image.shape, 4)[0]
    assert 1 < depth < 20
    folder = tmp_path / "a.ome.zarr"
    seen: list[int] = []

    def planes():
        for z in range(20):
            if z == depth + 1:  # the first slab (chunks at z index 0) was written before this plane
                seen.append(len(list((folder / "0" / "0").rglob("*"))))
            yield np.full((600, 600), z, np.float32)

    write_ome_zarr(folder, image, planes(), dtype=np.dtype(np.float32))
    assert seen and seen[0] > 0
    np.testing.assert_array_equal(np.asarray(eprjax.read(folder).data)[:, 0, 0], np.arange(20))


def test_images_other_writers_made(tmp_path: Path) -> None:
    """Five axes with two channels and units in nanometres, as ome-zarr-py and bioformats2raw
    write them: a channel must be chosen, the voxel size comes out in um."""
    root = tmp_path / "other.ome.zarr"
    group = zarr.open_group(str(root), mode="w", zarr_format=2)
    data = np.arange(1 * 2 * 3 * 8 * 9, dtype=np.uint16).reshape(1, 2, 3, 8, 9)
    array = group.create_array("s0", shape=data.shape, chunks=(1, 1, 3, 8, 9), dtype=data.dtype, chunk_key_encoding={"name": "v2", "separator": "/"})
    array[:] = data
    group.attrs["multiscales"] = [{
        "version": "0.4",
        "axes": [{"name": "t", "type": "time", "unit": "second"}, {"name": "c", "type": "channel"},
                 {"name": "z", "type": "space", "unit": "nanometer"}, {"name": "y", "type": "space", "unit": "nanometer"},
                 {"name": "x", "type": "space", "unit": "nanometer"}],
        "datasets": [{"path": "s0", "coordinateTransformations": [{"type": "scale", "scale": [1, 1, 500, 65, 65]}]}],
    }]
    with pytest.raises(eprjax.ParameterError, match="2 channels"):
        eprjax.read(root)
    one = eprjax.read(root, channel=1)
    assert one.shape == (3, 8, 9) and one.voxel_size_um == pytest.approx((0.5, 0.065, 0.065))
    np.testing.assert_array_equal(np.asarray(one.data), data[0, 1])
    np.testing.assert_array_equal(one.data[1:3, 2:4, :5], data[0, 1, 1:3, 2:4, :5])  # sliced lazily
    # bioformats2raw puts the image one level down
    layout = tmp_path / "b2r.ome.zarr"
    zarr.open_group(str(layout), mode="w", zarr_format=2).attrs["bioformats2raw.layout"] = 3
    shutil.copytree(root, layout / "0")
    assert eprjax.read(layout, channel=0).shape == (3, 8, 9)


def test_ome_zarr_py_s_writer(tmp_path: Path) -> None:
    pytest.importorskip("ome_zarr")
    with warnings.catch_warnings():  # its module makes a deprecated object at import
        warnings.simplefilter("ignore", DeprecationWarning)
        from ome_zarr.io import parse_url
        from ome_zarr.writer import write_image

    data = np.random.default_rng(0).integers(0, 4000, size=(4, 32, 32)).astype(np.uint16)
    group = zarr.open_group(parse_url(str(tmp_path / "w.ome.zarr"), mode="w").store, mode="w")
    units = {a: "micrometer" for a in "zyx"}
    write_image(data, group, axes="zyx", scale={"z": 0.5, "y": 0.1, "x": 0.1}, axes_units=units, scale_factors=(2,))
    image = eprjax.read(tmp_path / "w.ome.zarr")
    np.testing.assert_array_equal(np.asarray(image.data), data)
    assert image.shape == (4, 32, 32) and image.voxel_size_um == pytest.approx((0.5, 0.1, 0.1))


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        ("no metadata", "no multiscales"),
        ("old version", "version 0.3"),
        ("not a group", "not a Zarr group"),
        ("bad axes", "axes"),
        ("missing array", "cannot open"),
        ("a file", "not a folder"),
        ("bad scale", "scale"),
    ],
)
def test_damaged_folders_are_one_line(tmp_path: Path, damage: str, message: str) -> None:
    path = eprjax.write(tmp_path / "a.ome.zarr", _image((3, 8, 8)))
    attrs_file = path / ".zattrs"
    attrs = json.loads(attrs_file.read_text())
    ms = attrs["multiscales"][0]
    if damage == "no metadata":
        attrs_file.write_text("{}")
    elif damage == "old version":
        ms["version"] = "0.3"
        attrs_file.write_text(json.dumps(attrs))
    elif damage == "not a group":
        (path / ".zgroup").unlink()
    elif damage == "bad axes":
        ms["axes"] = ms["axes"][::-1][:2] + [{"name": "q", "type": "weird"}]
        attrs_file.write_text(json.dumps(attrs))
    elif damage == "missing array":
        shutil.rmtree(path / "0")
    elif damage == "a file":
        shutil.rmtree(path)
        path.write_bytes(b"not a folder")
    elif damage == "bad scale":
        ms["datasets"][0]["coordinateTransformations"] = [{"type": "scale", "scale": [1, "x"]}]
        attrs_file.write_text(json.dumps(attrs))
    with pytest.raises(eprjax.FileFormatError, match=message):
        eprjax.read(path)


def test_a_damaged_chunk_is_one_line_when_read(tmp_path: Path) -> None:
    path = eprjax.write(tmp_path / "a.ome.zarr", _image((3, 8, 8)))
    chunk = next(p for p in (path / "0").rglob("*") if p.is_file() and not p.name.startswith("."))
    chunk.write_bytes(b"\x00garbage" * 3)
    image = eprjax.read(path)
    with pytest.raises(eprjax.FileFormatError, match="cannot read its pixels"):
        np.asarray(image.data)


def test_replaced_whole_or_not_at_all(tmp_path: Path) -> None:
    target = tmp_path / "a.ome.zarr"
    eprjax.write(target, _image((3, 8, 8), seed=1))
    first = np.asarray(eprjax.read(target).data)
    eprjax.write(target, _image((4, 8, 8), seed=2))  # an OME-Zarr is replaced by the new one
    assert eprjax.read(target).shape == (4, 8, 8)

    def failing():
        yield np.zeros((8, 8), np.float32)
        raise RuntimeError("the disk fell off")

    with pytest.raises(RuntimeError), atomic_output(target, folder=True) as tmp:
        _omezarr.write_ome_zarr(tmp, _image((3, 8, 8)), failing(), dtype=np.dtype(np.float32))
    assert eprjax.read(target).shape == (4, 8, 8)  # the old one is intact
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.ome.zarr"]  # no temporary folder left
    # a folder that is not an OME-Zarr image is never replaced
    mine = tmp_path / "mine.ome.zarr"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep")
    with pytest.raises(eprjax.ParameterError, match="not an OME-Zarr image"):
        eprjax.write(mine, first)
    assert (mine / "notes.txt").read_text() == "keep"


def test_convert_to_and_from(workdir: Path, capsys) -> None:
    image = _image((2, 5, 40, 30), np.uint16)
    eprjax.write("in.tif", image)
    assert run_eprjax(["convert", "in.tif", "out.ome.zarr", "-ngff", "0.5", "-pyramid", "2"]) == 0
    assert sorted(p.name for p in Path("out.ome.zarr").iterdir()) == ["0", "1", "2", "zarr.json"]
    assert run_eprjax(["convert", "out.ome.zarr", "back.i2i"]) == 0
    back = eprjax.read("back.i2i")
    np.testing.assert_array_equal(back.data, image.data.astype(np.float32))
    assert back.voxel_size_um == pytest.approx(image.voxel_size_um)
    assert back.history[:2] == image.history and "convert in.tif out.ome.zarr" in back.history[2]
    capsys.readouterr()
    assert run_eprjax(["convert", "in.tif", "x.ome.zarr", "-ngff", "0.3"]) != 0
    assert "-ngff" in capsys.readouterr().err
    # an output folder that holds the input is refused
    Path("holder.ome.zarr").mkdir()
    shutil.copy("in.tif", "holder.ome.zarr/in.tif")
    assert run_eprjax(["convert", "holder.ome.zarr/in.tif", "holder.ome.zarr"]) == 1
    assert "holds the input" in capsys.readouterr().err
    assert Path("holder.ome.zarr/in.tif").is_file()


def test_epr_from_and_to_ome_zarr(workdir: Path, compilation_cache) -> None:
    psf = gaussian_psf((9, 9, 9), (2.0, 1.5, 1.5))
    eprjax.write("psf.i2i", psf)
    g = blurred(scene((12, 48, 48)), psf) * 100
    eprjax.write("image.i2i", eprjax.Image(g, voxel_size_um=(0.2, 0.1, 0.1)))
    assert run_eprjax(["convert", "image.i2i", "image.ome.zarr"]) == 0
    assert run_eprjax(["epr", "-psf", "psf", "-sm", "1e-3", "image", "ref.i2i"]) == 0
    assert run_eprjax(["epr", "-psf", "psf", "-sm", "1e-3", "image.ome.zarr", "out.ome.zarr"]) == 0
    out = eprjax.read("out.ome.zarr")
    np.testing.assert_array_equal(np.asarray(out.data), eprjax.read("ref.i2i").data)
    assert out.voxel_size_um == pytest.approx((0.2, 0.1, 0.1)) and out.history[-1].startswith("epr: alpha 0.001")
