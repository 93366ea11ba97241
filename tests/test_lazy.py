"""Lazy inputs and outputs on disk: `eprjax.restore` reads an array it is given by slicing
(Zarr, dask, h5py, a memory map), a segment at a time, and sums the result into ``out`` (a
Zarr array, or any array that takes slice assignment) without holding the volume."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import eprjax

from .test_restore import blurred, gaussian_psf, scene

zarr = pytest.importorskip("zarr")

SEGMENTS = {"segment": (40, 40), "overlap": (16, 16)}  # 9 segments of an 88 x 88 field
SETTINGS = {"alpha": 1e-3, "tol": 1e-4}


@pytest.fixture(scope="module")
def problem() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Data, PSF, and the segmented restoration of the data held in memory."""
    psf = gaussian_psf((9, 9, 9), (2.0, 1.5, 1.5))
    g = blurred(scene((12, 88, 88)), psf) * 100
    expected = np.asarray(eprjax.restore(g, psf, **SETTINGS, **SEGMENTS).value)
    return g, psf, expected


class Spy:
    """An array read only by slicing: it records how many voxels each read takes, and
    refuses to be converted whole."""

    def __init__(self, data: np.ndarray) -> None:
        self._data = data
        self.shape, self.dtype, self.ndim = data.shape, data.dtype, data.ndim
        self.reads: list[int] = []

    __module__ = "zarr.spy"  # counted among the lazy arrays, as a Zarr array would be

    def __getitem__(self, key):
        out = self._data[key]
        self.reads.append(int(np.size(out)))
        return out

    def __array__(self, dtype=None, copy=None):
        raise AssertionError("the whole array was read")


def _close(a, b) -> None:
    np.testing.assert_allclose(np.asarray(a), b, rtol=1e-5, atol=1e-5 * float(np.max(b)))


def test_a_lazy_input_is_read_a_segment_at_a_time(problem) -> None:
    g, psf, expected = problem
    spy = Spy(g)
    solution = eprjax.restore(spy, psf, **SETTINGS, **SEGMENTS)
    _close(solution.value, expected)
    assert bool(solution.converged)
    assert max(spy.reads) <= 12 * 40 * 40  # a segment (or a slab of planes, checked for NaN)
    assert sum(spy.reads) < 3 * g.size  # each voxel read about once to check, once or more per overlapping segment


def test_out_fills_a_zarr_array_on_disk(problem, tmp_path: Path) -> None:
    g, psf, expected = problem
    source = zarr.create_array(str(tmp_path / "in.zarr"), shape=g.shape, chunks=(12, 32, 32), dtype="float32")
    source[:] = g
    solution = eprjax.restore(source, psf, **SETTINGS, **SEGMENTS, out=tmp_path / "out.zarr")
    assert isinstance(solution.value, zarr.Array) and solution.value.shape == g.shape
    _close(zarr.open_array(str(tmp_path / "out.zarr"), mode="r")[:], expected)
    with pytest.raises(eprjax.ParameterError, match="exists"):
        eprjax.restore(source, psf, **SETTINGS, **SEGMENTS, out=tmp_path / "out.zarr")
    # an array of the caller's, whatever it held before
    mine = zarr.create_array(str(tmp_path / "mine.zarr"), shape=g.shape, chunks=(12, 50, 50), dtype="float32", fill_value=7.0)
    assert eprjax.restore(g, psf, **SETTINGS, **SEGMENTS, out=mine).value is mine
    _close(mine[:], expected)
    with pytest.raises(eprjax.ParameterError, match="shaped"):
        eprjax.restore(g, psf, **SETTINGS, **SEGMENTS, out=np.zeros((12, 88, 87), np.float32))
    with pytest.raises(eprjax.ParameterError, match="floating-point"):
        eprjax.restore(g, psf, **SETTINGS, **SEGMENTS, out=np.zeros(g.shape, np.int16))


def test_a_memory_map_as_out(problem, tmp_path: Path) -> None:
    g, psf, expected = problem
    out = np.lib.format.open_memmap(tmp_path / "out.npy", mode="w+", dtype=np.float32, shape=g.shape)
    eprjax.restore(np.lib.format.open_memmap(_saved(tmp_path, g), mode="r"), psf, **SETTINGS, **SEGMENTS, out=out)
    out.flush()
    _close(np.load(tmp_path / "out.npy"), expected)


def _saved(tmp_path: Path, g: np.ndarray) -> Path:
    np.save(tmp_path / "in.npy", g)
    return tmp_path / "in.npy"


def test_dask_and_h5py_inputs(problem, tmp_path: Path) -> None:
    g, psf, expected = problem
    da = pytest.importorskip("dask.array")
    _close(eprjax.restore(da.from_array(g, chunks=(12, 30, 30)), psf, **SETTINGS, **SEGMENTS).value, expected)
    h5py = pytest.importorskip("h5py")
    with h5py.File(tmp_path / "in.h5", "w") as f:
        f["g"] = g
    with h5py.File(tmp_path / "in.h5", "r") as f:
        _close(eprjax.restore(f["g"], psf, **SETTINGS, **SEGMENTS).value, expected)


def test_several_volumes_and_lazy_weights(problem, tmp_path: Path) -> None:
    g, psf, expected = problem
    series = zarr.create_array(str(tmp_path / "series.zarr"), shape=(2, *g.shape), chunks=(1, 12, 44, 44), dtype="float32")
    series[0], series[1] = g, 2 * g
    out = eprjax.restore(series, psf, **SETTINGS, **SEGMENTS, out=tmp_path / "out.zarr").value
    _close(out[0], expected)
    _close(out[1], np.asarray(eprjax.restore(2 * g, psf, **SETTINGS, **SEGMENTS).value))
    w = np.random.default_rng(3).uniform(0.5, 2.0, size=g.shape).astype(np.float32)
    weights = zarr.create_array(str(tmp_path / "w.zarr"), shape=g.shape, chunks=(12, 44, 44), dtype="float32")
    weights[:] = w
    weighted = np.asarray(eprjax.restore(g, psf, **SETTINGS, **SEGMENTS, weights=w).value)
    _close(eprjax.restore(Spy(g), psf, **SETTINGS, **SEGMENTS, weights=weights).value, weighted)
    bad = weights[:]
    bad[0, 0, 0] = -1
    with pytest.raises(eprjax.ParameterError, match=">= 0"):
        eprjax.restore(Spy(g), psf, **SETTINGS, **SEGMENTS, weights=Spy(bad))


def test_a_lazy_volume_that_fits_is_restored_whole(problem) -> None:
    """Without ``segment``, the plan takes the whole volume when the memory allows: the same
    restoration as the volume's in memory."""
    g, psf, _ = problem
    whole = np.asarray(eprjax.restore(g, psf, **SETTINGS).value)
    lazy = np.asarray(eprjax.restore(Spy(g), psf, **SETTINGS).value)
    # one volume through the segment machinery (batched) and through the plain solve: round-off
    # differs, so the preconditioner's switch (at an active share) may fall an iteration apart
    # and the two stop at tol along different paths: equal to what tol allows, not to round-off
    assert np.linalg.norm(lazy - whole) / np.linalg.norm(whole) < 10 * SETTINGS["tol"]


def test_what_a_lazy_input_cannot_do(problem) -> None:
    g, psf, _ = problem
    with pytest.raises(eprjax.ParameterError, match="without history or callback"):
        eprjax.restore(Spy(g), psf, **SETTINGS, history=True)
    bad = g.copy()
    bad[3, 4, 5] = np.nan
    with pytest.raises(eprjax.ParameterError, match="NaN"):
        eprjax.restore(Spy(bad), psf, **SETTINGS)
    with pytest.raises(eprjax.ParameterError, match="axes"):
        eprjax.restore(Spy(g[0]), psf, **SETTINGS)
