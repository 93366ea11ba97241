"""What the napari widgets compute, without napari or a display (eprjax._napari._work and
_layers import neither): the preview's region, stopping between chunks, the PSF brought to
the data's sampling, Auto's fallback on a real light-sheet stack."""

from __future__ import annotations

import numpy as np
import pytest

import eprjax
from eprjax._napari import _layers, _work


def test_the_preview_box_is_every_plane_and_a_square_inside_the_image():
    assert _work.preview_box((10, 200, 300)) == (slice(0, 10), slice(52, 148), slice(102, 198))
    assert _work.preview_box((10, 200, 300), (3, 5, 290), 64) == (slice(0, 10), slice(0, 64), slice(236, 300))  # pushed inside
    assert _work.preview_box((4, 20, 30), None, 96) == (slice(0, 4), slice(0, 20), slice(0, 30))  # the whole, where smaller
    with pytest.raises(eprjax.ParameterError, match="at least 8 voxels"):
        _work.preview_box((4, 20, 30), None, 4)


def test_a_restoration_stops_between_chunks_when_asked():
    rng = np.random.default_rng(0)
    g = rng.random((8, 32, 32), np.float32)
    psf = np.asarray(eprjax.widefield_psf((7, 15, 15), na=1.4, n=1.515, wavelength_um=0.52, pixel_size_um=0.187, z_step_um=0.25))
    seen = []
    with pytest.raises(_work.Cancelled, match="stopped after"):
        _work.restore(g, psf, alpha=1e-6, max_iterations=100000, tol=1e-9, report=lambda k, n, text: seen.append(k), stop=lambda: len(seen) >= 3)
    assert len(seen) == 3 and seen == sorted(seen)


def test_the_psf_is_brought_to_the_data_sampling_or_refused():
    fine = np.asarray(eprjax.widefield_psf((41, 31, 31), na=1.4, n=1.515, wavelength_um=0.52, pixel_size_um=0.187, z_step_um=0.1))
    data = np.zeros((12, 40, 40), np.float32)
    h, notes = _work.psf_like_data(fine, (0.1, 0.187, 0.187), data, (0.3, 0.187, 0.187))
    np.testing.assert_allclose(h, np.maximum(np.asarray(eprjax.resample_psf(fine, (0.1, 0.187, 0.187), (0.3, 0.187, 0.187))), 0), atol=1e-7)
    assert any("band-limited resampling" in n for n in notes)
    same, notes = _work.psf_like_data(fine, (0.1, 0.187, 0.187), data, (0.1, 0.187, 0.187))
    np.testing.assert_array_equal(same, fine.astype(np.float32))
    assert notes == []
    rough = np.random.default_rng(1).random((13, 31, 31))  # light up to its Z sampling limit
    with pytest.raises(eprjax.ParameterError, match="coarser than"):  # at 0.3 um for 0.1 um data: detail it lacks
        _work.psf_like_data(rough, (0.3, 0.187, 0.187), data, (0.1, 0.187, 0.187))


def test_layer_scale_and_voxel_size_go_both_ways():
    image = eprjax.Image(np.zeros((2, 3, 4, 5), np.float32), voxel_size_um=(0.3, None, 0.1))
    data, attributes, kind = _layers.layer_data(image, "t")
    assert kind == "image" and attributes["scale"] == (1.0, 0.3, 1.0, 0.1)
    assert _layers.voxel_size_of(attributes["scale"], attributes["metadata"]) == (0.3, None, 0.1)
    assert _layers.voxel_size_of((0.3, 2.0, 0.1), attributes["metadata"]) == (0.3, 2.0, 0.1)  # set in napari: kept
    assert _layers.voxel_size_of((1.0, 0.5, 0.5), None) == (None, 0.5, 0.5)


def test_auto_falls_back_to_gcv_where_the_discrepancy_finds_no_alpha(shared_data):
    """On the shared light-sheet stack (deskewed: an empty wedge in each corner), the
    discrepancy principle finds alpha in the middle, and none in a corner, where the noise it
    measures exceeds anything the model leaves; Auto then takes GCV's choice and says so."""
    tifffile = pytest.importorskip("tifffile")
    folder = shared_data / "pycudadecon"
    bead = tifffile.imread(folder / "psf.tif")
    stack = tifffile.imread(folder / "im_deskewed.tif").astype(np.float32) - 96.5  # the tutorial's background
    psf = eprjax.prepare_psf(bead, na=1.1, n=1.33, wavelength_um=0.52, pixel_size_um=0.1, z_step_um=0.1, modality="lightsheet", sheet_na=0.4, excitation_um=0.488)
    h, _ = _work.psf_like_data(psf.value, psf.voxel_size_um, stack, (0.3, 0.1, 0.1))
    middle, said = _work.auto_alpha(stack, h, region=_work.preview_box(stack.shape, (44, 160, 240), 96))
    assert middle.criterion == "discrepancy" and "GCV" not in said
    corner, said = _work.auto_alpha(stack, h, region=_work.preview_box(stack.shape, (44, 320, 481), 96))
    assert corner.criterion == "gcv" and "the discrepancy principle found no alpha" in said
    assert corner.alpha == corner.alphas[np.argmin(corner.values)]
