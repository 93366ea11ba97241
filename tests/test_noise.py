"""The noise model measured on the data (`eprjax.estimate_noise`): against closed forms (flat
fields of known Poisson and Gaussian noise) and against the camera that made simulated
acquisitions of a specimen past the field, at three brightnesses."""

from __future__ import annotations

import math

import numpy as np
import pytest

import eprjax
from eprjax._noise import _correlation_factor
from eprjax._simulate import SEED_OPTICS, camera_stack


def test_flat_fields_closed_form() -> None:
    """Poisson light of 40 photons on an offset of 100 counts, gain 1: variance = level - 100,
    slope 1 and intercept -100 (standard errors from the fit; 5 of them allowed); Gaussian
    noise alone: slope 0, the variance its own."""
    rng = np.random.default_rng(0)
    shape = (24, 64, 64)
    ramp = np.linspace(20, 60, shape[2])[None, None, :]  # a gentle ramp: levels to fit a line to
    poisson = rng.poisson(np.broadcast_to(ramp, shape)).astype(np.float64) + 100.0
    m = eprjax.estimate_noise(poisson)
    se = np.sqrt(np.diag(m.covariance))
    assert abs(m.slope - 1) < 5 * se[0] and abs(m.intercept + 100) < 5 * se[1]
    assert se[0] < 0.05
    gaussian = rng.normal(10.0, 3.0, shape)
    g = eprjax.estimate_noise(gaussian)
    assert g.slope == pytest.approx(0.0, abs=0.05)
    assert float(g.variance(10.0)) == pytest.approx(9.0, rel=0.03)
    assert not g.integer and math.isinf(g.gain)
    # the standard errors follow from the filter's autocorrelation: (1 + 2 (2/3)^2 + 2 (1/6)^2)^3
    assert _correlation_factor() == pytest.approx((1 + 2 * (4 / 6) ** 2 + 2 * (1 / 6) ** 2) ** 3)


@pytest.mark.parametrize("peak", [30.0, 300.0, 3000.0])
def test_camera_numbers_from_a_simulated_acquisition(peak: float) -> None:
    """A widefield specimen past the field, Poisson light on 3 photons of background, read
    noise 2 electrons, gain 1 electron per count, offset 100, whole counts: the gain and the
    read noise (given the offset) within 10 % of the camera's, and within 3.5 of their
    standard errors (measured at these seeds: gain +2.5 %, +0.1 %, +0.7 %; read noise +4 %,
    +0.8 %, -3.6 %)."""
    h = np.asarray(eprjax.widefield_psf((25, 65, 65), **SEED_OPTICS), np.float64)
    z_over_xy = SEED_OPTICS["z_step_um"] / SEED_OPTICS["pixel_size_um"]
    st = camera_stack((48, 128, 128), h, peak_photons=peak, background_photons=3.0, gain=1.0, read_noise=2.0, seed=1, z_over_xy=z_over_xy)
    m = eprjax.estimate_noise(np.rint(st.counts))
    assert m.integer
    assert abs(m.gain / st.gain - 1) < 0.1 and abs(m.gain - st.gain) < 3.5 * m.gain_error
    read = m.read_noise(st.offset)
    assert abs(read / st.read_noise - 1) < 0.1 and abs(read - st.read_noise) < 3.5 * m.read_noise_error(st.offset)
    line = m.describe(st.offset)
    assert "gain" in line and "read noise" in line and "electrons" in line


def test_saturation_is_left_out_and_errors() -> None:
    """Voxels at a common maximum (saturation) do not count; too small, non-finite: one clear error."""
    rng = np.random.default_rng(1)
    x = rng.poisson(np.linspace(50, 400, 64)[None, None, :] * np.ones((16, 48, 1))).astype(np.float64)
    clipped = np.minimum(x, 300.0)
    m = eprjax.estimate_noise(clipped)
    assert m.levels.max() < 300 and m.slope == pytest.approx(1.0, rel=0.1)
    with pytest.raises(eprjax.ParameterError, match="at least 5x5x5"):
        eprjax.estimate_noise(np.ones((4, 64, 64)))
    bad = x.copy()
    bad[3, 3, 3] = np.nan
    with pytest.raises(eprjax.ParameterError, match="NaN"):
        eprjax.estimate_noise(bad)


def test_prepdata_rnl_from_the_measured_noise() -> None:
    """Without the camera's numbers prepare_data's RNL comes from the noise measured on the
    data, and agrees with the RNL from the true camera numbers to within a few percent."""
    h = np.asarray(eprjax.widefield_psf((25, 65, 65), **SEED_OPTICS), np.float64)
    st = camera_stack((32, 96, 96), h, peak_photons=300.0, background_photons=3.0, gain=1.0, read_noise=2.0, seed=2)
    raw = np.rint(st.counts)
    known = eprjax.prepare_data(raw, offset=st.offset, gain=st.gain, read_noise=st.read_noise, bg_ref=(5, 5, 3))
    measured = eprjax.prepare_data(raw, offset=st.offset, bg_ref=(5, 5, 3))
    assert measured.noise is not None and np.isfinite(float(measured.rnl))
    assert float(measured.rnl) == pytest.approx(float(known.rnl), rel=0.05)


def test_noise_correlated_within_the_planes() -> None:
    """Poisson light smoothed along X within each plane (as deskewing's interpolation does):
    the 3-D filter would see a third of the noise; the model is measured along Z alone, says
    so, and gives the voxels' own variance (for x' = (x_-1 + 2 x + x_+1) / 4 of Poisson(L):
    6 L / 16 per voxel)."""
    from scipy import ndimage

    rng = np.random.default_rng(4)
    ramp = np.linspace(50, 150, 96)[None, :, None]
    light = rng.poisson(np.broadcast_to(ramp, (32, 96, 96))).astype(np.float64)
    smoothed = ndimage.correlate1d(light, np.array([1.0, 2.0, 1.0]) / 4, axis=2, mode="nearest")
    m = eprjax.estimate_noise(smoothed)
    assert m.correlated and "correlated within the planes" in m.describe()
    assert float(m.variance(100.0)) == pytest.approx(6 * 100 / 16, rel=0.05)
    assert not eprjax.estimate_noise(light).correlated


def test_segments_are_measured_together() -> None:
    """(segments, Z, Y, X): one model over all segments, each filtered on its own (no seam
    between them), as the whole volume's; the per-voxel variance keeps the segments' shape."""
    rng = np.random.default_rng(5)
    light = rng.poisson(np.broadcast_to(np.linspace(20, 200, 96)[None, None, :], (24, 64, 96))).astype(np.float64)
    whole = eprjax.estimate_noise(light)
    parts = eprjax.estimate_noise(np.stack([light[:, :32], light[:, 32:]]))
    assert parts.slope == pytest.approx(whole.slope, rel=0.05) and parts.slope == pytest.approx(1.0, rel=0.05)
    assert parts.voxel_variance(np.stack([light[:, :32], light[:, 32:]])).shape == (2, 24, 32, 96)
