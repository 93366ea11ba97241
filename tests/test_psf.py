"""preppsf: a synthetic bead acquisition recovered; the OTF mask; the shared measured PSF."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import eprjax

OPTICS = dict(na=1.2, n=1.33, wavelength_um=0.6, pixel_size_um=0.1, z_step_um=0.2)  # Nyquist-sampled
SHAPE = (32, 64, 64)
PHOTONS, BACKGROUND, READ = 2e6, 100.0, 2.0


def acquire(offset, seed=0):
    """A bead acquisition: the model PSF moved by ``offset`` voxels, photons, background,
    Poisson and read noise. Returns (acquisition, the noiseless expectation)."""
    h = np.asarray(eprjax.widefield_psf(SHAPE, offset=offset, **OPTICS), np.float64)
    clean = h * PHOTONS + BACKGROUND
    rng = np.random.default_rng(seed)
    return (rng.poisson(clean) + rng.normal(0, READ, SHAPE)).astype(np.float32), clean


def true_psf(size_z: int, size_xy: int) -> np.ndarray:
    """The model PSF, centred, as many photons as the acquisition, cut to the size."""
    full = np.asarray(eprjax.widefield_psf(SHAPE, **OPTICS), np.float64) * PHOTONS
    c, hz, hy = np.array(SHAPE) // 2, size_z // 2, size_xy // 2
    return full[c[0] - hz : c[0] + hz + 1, c[1] - hy : c[1] + hy + 1, c[2] - hy : c[2] + hy + 1]


@pytest.mark.parametrize("offset", [(0.3, -0.2, 0.4), (-0.45, 0.1, -0.35)])
def test_recovers_a_synthetic_bead(offset) -> None:
    acquisition, clean = acquire(offset)
    size = (29, 61)
    psf = eprjax.prepare_psf(acquisition, norm="none", mask=1, background=None, size=size, **OPTICS)
    true_centre = np.array(SHAPE) // 2 + np.array(offset)
    assert np.max(np.abs(np.array(psf.centre) - true_centre)) < 0.05
    np.testing.assert_allclose(np.array(psf.shift), np.array([14, 30, 30]) - true_centre, atol=0.05)
    assert psf.value.shape == (29, 61, 61) and psf.value.dtype == np.float32
    truth = true_psf(*size)
    error = np.linalg.norm(np.asarray(psf.value) - truth) / np.linalg.norm(truth)
    # the noise floor: the acquisition's own noise over the same region
    cut = tuple(slice(int(round(c)) - h, int(round(c)) + h + 1) for c, h in zip(true_centre, (14, 30, 30), strict=True))
    floor = np.linalg.norm((acquisition - clean)[cut]) / np.linalg.norm(truth)
    assert error < floor, (error, floor)  # measured: 0.056 against a floor of 0.13
    assert abs(float(psf.background) - BACKGROUND) < 0.1 * BACKGROUND


def test_normalisations() -> None:
    acquisition, _ = acquire((0.2, 0.2, -0.1))
    infocus = np.asarray(eprjax.prepare_psf(acquisition, norm="infocus", **OPTICS).value)
    assert infocus[infocus.shape[0] // 2].sum() == pytest.approx(1, rel=1e-5)
    total = np.asarray(eprjax.prepare_psf(acquisition, norm="total", **OPTICS).value)
    assert total.sum() == pytest.approx(1, rel=1e-5)
    for h in (infocus, total):
        assert h.min() >= 0
        assert np.unravel_index(np.argmax(h), h.shape) == tuple(np.array(h.shape) // 2)


def test_mask_keeps_a_theoretical_psf_whole() -> None:
    h = np.asarray(eprjax.widefield_psf((31, 63, 63), **OPTICS))
    out = eprjax.prepare_psf(h, norm="none", mask=1, background=0.0, centre=(15, 31, 31), **OPTICS)
    assert float(out.masked_fraction) < 1e-3
    np.testing.assert_allclose(np.asarray(out.value), h, atol=2e-3 * h.max())


def _outside_energy(h: np.ndarray, **optics) -> float:
    support = eprjax.otf_support(h.shape, **optics)
    spectrum = np.abs(np.fft.rfftn(h)) ** 2
    return float(spectrum[~support].sum() / spectrum.sum())


def test_mask_removes_what_lies_outside_the_support() -> None:
    acquisition, _ = acquire((0.1, 0.3, -0.2))
    raw = eprjax.prepare_psf(acquisition, norm="total", mask=None, **OPTICS).value
    masked = eprjax.prepare_psf(acquisition, norm="total", mask=1, **OPTICS).value
    assert _outside_energy(np.asarray(raw), **OPTICS) > 1e-3
    assert _outside_energy(np.asarray(masked), **OPTICS) < 1e-6
    assert np.asarray(masked).min() >= 0


def test_support_geometry() -> None:
    """Lateral cut-off 2 NA / lambda; the missing cone; the axial extent at q = NA / lambda."""
    optics = dict(na=1.2, n=1.33, wavelength_um=0.6, pixel_size_um=0.05, z_step_um=0.05)
    support = eprjax.otf_support((128, 128, 128), **optics)
    kx = np.fft.rfftfreq(128, d=0.05)
    kz = np.fft.fftfreq(128, d=0.05)
    cutoff = 2 * 1.2 / 0.6
    assert support[0, 0, kx <= cutoff].all() and not support[0, 0, kx > cutoff + 1e-9].any()
    assert support[0, 0, 0] and not support[1, 0, 0]  # the missing cone
    column = int(np.argmin(np.abs(kx - 2.0)))  # q near R = NA / lambda, where the extent peaks
    q, k0, radius = kx[column], 1.33 / 0.6, 1.2 / 0.6
    extent = np.sqrt(k0**2 - (radius - q) ** 2) - np.sqrt(k0**2 - radius**2)
    inside = np.abs(kz[support[:, 0, column]])
    assert inside.max() <= extent + 1e-9 and inside.max() > extent - 1 / (128 * 0.05)


def test_differentiable_in_the_bead() -> None:
    import jax
    import jax.numpy as jnp

    acquisition, _ = acquire((0.2, -0.1, 0.3))

    def loss(bead):
        return jnp.sum(eprjax.prepare_psf(bead, norm="none", size=(9, 21), background=100.0, centre=(16.2, 31.9, 32.3), distill=False, **OPTICS).value ** 2)

    grad = jax.grad(loss)(jnp.asarray(acquisition))
    assert grad.shape == SHAPE and np.isfinite(np.asarray(grad)).all() and np.abs(np.asarray(grad)).max() > 0


@pytest.mark.parametrize(
    ("change", "kwargs", "message"),
    [
        (lambda x: x, {"size": (99, 21)}, "does not fit around the bead"),
        (lambda x: np.roll(x, (0, 29, 0), axis=(0, 1, 2)), {}, "too close to the edge"),
        (lambda x: np.full_like(x, 100.0) + np.random.default_rng(1).normal(0, 3, x.shape).astype(np.float32), {}, "no bead"),
        (lambda x: x, {"norm": "peak"}, "norm must be one of"),
        (lambda x: x, {"na": 1.5}, "numerical aperture (1.5) must be smaller"),
        (lambda x: x, {"mask": -1.0}, "mask must be a positive scale"),
        (lambda x: x[0], {}, "must be (Z, Y, X)"),
    ],
)
def test_errors(change, kwargs, message) -> None:
    acquisition, _ = acquire((0.0, 0.0, 0.0))
    with pytest.raises(eprjax.ParameterError, match=message.replace("(", r"\(").replace(")", r"\)")):
        eprjax.prepare_psf(change(acquisition), **{**OPTICS, **kwargs})


def test_shared_measured_bead(shared_data: Path) -> None:
    """A real lattice light-sheet bead (dx = dz = 0.1 um), detection NA 1.1 in water."""
    bead = eprjax.read(shared_data / "pycudadecon" / "psf.tif")
    optics = dict(na=1.1, n=1.33, wavelength_um=0.52, pixel_size_um=0.1, z_step_um=0.1)
    psf = eprjax.prepare_psf(bead.data, norm="infocus", mask=1, **optics)
    h = np.asarray(psf.value)
    assert h.min() >= 0
    assert h[h.shape[0] // 2].sum() == pytest.approx(1, rel=1e-5)
    assert h.shape[1] == h.shape[2] and all(n % 2 == 1 for n in h.shape)
    # (the data's README says "about 100"; the stack's median, nearly all background, is 142)
    assert abs(float(psf.background) - np.median(np.asarray(bead.data))) < 0.05 * np.median(np.asarray(bead.data))
    assert np.max(np.abs(np.array(psf.centre) - (30, 71, 64))) < 1.5  # the brightest voxel
    assert _outside_energy(h, **optics) < 1e-6
    # centred: its own centroid core sits at the origin
    core = np.maximum(h - 0.1 * h.max(), 0)
    centroid = [float((core.sum(axis=tuple(a for a in range(3) if a != axis)) * np.arange(n)).sum() / core.sum()) for axis, n in enumerate(h.shape)]
    np.testing.assert_allclose(centroid, np.array(h.shape) // 2, atol=0.1)
