"""Restoration onto a finer grid (super_epr, epr -super K): the block-sum operator, the fine
PSF, agreement with an independent solver, and the separation of two close points."""

from __future__ import annotations

import math

import numpy as np
import pytest

import eprjax
from eprjax._operator import adjoint, bin_blocks, forward, make_grid, psf_otf, spread_blocks

from .conftest import run_eprjax as cli
from .reference import Model, block_spread, block_sum, fista
from .test_restore import blurred, gaussian_psf, relative, scene


pytestmark = pytest.mark.usefixtures("compilation_cache")


@pytest.mark.parametrize("factor", [(1, 2, 2), (2, 2, 2), (1, 3, 2)])
def test_block_sum_and_spread(factor) -> None:
    rng = np.random.default_rng(0)
    coarse = (3, 4, 5)
    fine = tuple(n * k for n, k in zip(coarse, factor, strict=True))
    x, r = rng.normal(size=fine), rng.normal(size=coarse)
    np.testing.assert_allclose(np.asarray(bin_blocks(x, factor)), block_sum(x, factor), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(np.asarray(spread_blocks(r, factor)), block_spread(r, factor), rtol=1e-6)
    # adjoint pair: <D x, r> = <x, D^T r>
    assert np.isclose(np.sum(np.asarray(bin_blocks(x, factor)) * r), np.sum(x * np.asarray(spread_blocks(r, factor))), rtol=1e-5)


@pytest.mark.parametrize("pad", [0, (1, 3, 4)], ids=["periodic", "padded"])
def test_operator_and_adjoint_on_a_finer_grid(pad) -> None:
    factor = (1, 2, 2)
    psf = gaussian_psf((5, 7, 7), (1.0, 1.5, 1.5)).astype(np.float64)
    grid = make_grid((6, 5, 7), (pad,) * 3 if isinstance(pad, int) else pad, factor)
    assert grid.fine_shape == (6, 10, 14)
    model = Model(psf, grid.data_shape, grid.object_shape, grid.offset, factor)
    rng = np.random.default_rng(1)
    f, r = rng.normal(size=grid.object_shape), rng.normal(size=grid.data_shape)
    otf, _ = psf_otf(np.asarray(psf, np.float32), grid)
    np.testing.assert_allclose(np.asarray(forward(otf, f.astype(np.float32), grid)), model.forward(f), atol=2e-5 * np.abs(model.forward(f)).max())
    np.testing.assert_allclose(np.asarray(adjoint(otf, r.astype(np.float32), grid)), model.adjoint(r), atol=2e-5 * np.abs(model.adjoint(r)).max())


@pytest.mark.parametrize(
    ("shape", "factor", "pad"),
    [((6, 8, 10), 2, 0), ((6, 8, 10), 2, (2, 3, 3)), ((4, 5, 7), (2, 2, 2), (2, 2, 2)), ((5, 7, 6), (1, 3, 2), (1, 4, 3))],
    ids=["2-periodic", "2-padded", "222-odd", "132-odd"],
)
@pytest.mark.parametrize("alpha", [1e-2, 1e-3])
def test_agrees_with_fista_on_the_fine_grid(shape, factor, pad, alpha) -> None:
    k = (1, factor, factor) if isinstance(factor, int) else factor
    psf = gaussian_psf((5, 9, 9), (1.2, 2.0, 2.0))  # sampled on the fine grid
    fine = tuple(n * f for n, f in zip(shape, k, strict=True))
    g = np.asarray(block_sum(blurred(scene(fine, seed=3), psf, noise=0.0).astype(np.float64), k), np.float32)
    g += 0.01 * g.max() * np.random.default_rng(4).normal(size=g.shape).astype(np.float32)
    sol = eprjax.restore(g, psf, alpha=alpha, tol=1e-5, max_iterations=5000, pad=pad, factor=factor)
    assert bool(sol.converged), sol.message
    assert sol.value.shape == fine and sol.grid.factor == k
    model = Model(psf, g.shape, sol.grid.object_shape, sol.grid.offset, k)
    want = fista(model, g, alpha)
    assert relative(sol.value, want) < 1e-3


def test_alpha_means_the_same_on_a_finer_grid() -> None:
    """Closed form: for constant data c (periodic), the fine restoration is the constant
    c / (k s (1 + alpha)), whose blocks sum to the coarse restoration c / (s (1 + alpha))."""
    psf = gaussian_psf((5, 7, 7), (1.2, 2.0, 2.0))  # inside the coarse grid: s is its whole sum
    s, c, alpha = float(psf.sum()), 50.0, 0.1
    g = np.full((6, 8, 10), c, np.float32)
    coarse = eprjax.restore(g, psf, alpha=alpha, pad=0, tol=1e-6, max_iterations=100).value
    fine = eprjax.restore(g, psf, alpha=alpha, pad=0, factor=2, tol=1e-6, max_iterations=100).value
    np.testing.assert_allclose(coarse, c / (s * (1 + alpha)), rtol=1e-5)
    np.testing.assert_allclose(fine, c / (4 * s * (1 + alpha)), rtol=1e-5)


def test_detail_along_z_only_restores_alike_on_both_grids() -> None:
    """Data that vary along Z only: the coarse PSF the block sum of the fine one, the two
    models coincide, so the fine restoration's blocks sum to the coarse restoration."""
    psf_fine = gaussian_psf((9, 17, 17), (2.0, 4.0, 4.0))
    psf_coarse = np.asarray(block_sum(np.pad(psf_fine, ((0, 0), (0, 1), (0, 1))).astype(np.float64), (1, 2, 2)), np.float32)
    z = np.arange(16)[:, None, None]
    g = np.broadcast_to(100 + 60 * np.cos(2 * np.pi * z / 8) + 30 * np.sin(2 * np.pi * z / 5), (16, 8, 8)).astype(np.float32)
    coarse = eprjax.restore(g, psf_coarse, alpha=1e-3, pad=0, tol=1e-6, max_iterations=3000).value
    fine = eprjax.restore(g, psf_fine, alpha=1e-3, pad=0, factor=2, tol=1e-6, max_iterations=3000).value
    assert coarse.min() == 0  # non-negativity is active: the comparison is not of linear filters only
    assert relative(block_sum(np.asarray(fine, np.float64), (1, 2, 2)), coarse) < 1e-3


def _pixel_integrated_gaussian(n: int, width: float, sigma: float) -> np.ndarray:
    """A Gaussian's integral over each of n pixels of ``width`` (pixel n // 2 centred on it)."""
    edges = (np.arange(n + 1) - n // 2 - 0.5) * width
    return np.diff([0.5 * (1 + math.erf(e / (sigma * math.sqrt(2)))) for e in edges])


@pytest.mark.parametrize("n", [16, 17])
def test_fine_psf_matches_the_finer_camera(n) -> None:
    """A Gaussian PSF seen by pixels of width 1 (the data's), brought onto pixels of width
    1/2, matches the same Gaussian seen by pixels of width 1/2 (closed form, erf), once the
    coarse pixel's integration is swapped for the fine one's; interpolation alone is off by
    the pixel blur."""
    sigma = 1.2  # coarse pixels: sampled well enough that aliasing is ~exp(-2 pi^2 sigma^2 / 4) ~ 1e-3
    planes = np.array([0.5, 1.0, 0.5])[:, None, None]
    coarse_1d, fine_1d = _pixel_integrated_gaussian(n, 1.0, sigma), _pixel_integrated_gaussian(2 * n, 0.5, sigma)
    coarse = (planes * coarse_1d[:, None] * coarse_1d[None, :]).astype(np.float32)
    want = planes * fine_1d[:, None] * fine_1d[None, :]
    got = np.asarray(eprjax.fine_psf(coarse, 2))
    plain = np.asarray(eprjax.fine_psf(coarse, 2, pixel=False))
    assert got.shape == (3, 2 * n, 2 * n)
    assert np.unravel_index(np.argmax(got), got.shape) == (1, n, n)  # origin at shape // 2
    assert abs(got.sum() - coarse.sum()) < 1e-5 * coarse.sum()
    assert np.abs(got - want).max() < 2e-3 * want.max()  # measured 8e-5 (n 16), 2.5e-4 (n 17)
    assert np.abs(plain - want).max() > 0.03 * want.max()  # the pixel blur counted twice: 4 %


def test_fine_psf_in_z_and_errors() -> None:
    psf = gaussian_psf((9, 9, 9), (2.0, 1.5, 1.5))
    fine = np.asarray(eprjax.fine_psf(psf, (2, 1, 1)))
    assert fine.shape == (18, 9, 9)
    # the old planes (origin 4 -> 9) kept, each carrying half as much light: no pixel
    # correction along Z; the truncated Gaussian is not band-limited, hence the tolerance
    np.testing.assert_allclose(2 * fine[1::2], psf, atol=0.02 * psf.max())
    assert eprjax.fine_psf(psf, 1) is psf
    with pytest.raises(eprjax.ParameterError, match="factor"):
        eprjax.fine_psf(psf, 0)
    with pytest.raises(eprjax.ParameterError, match="factor"):
        eprjax.restore(np.ones((4, 8, 8), np.float32), psf, alpha=1e-3, factor=(1, 2))


# Two points 0.375 um apart, in focus, NA 1.4, 0.52 um light: the optics resolve them
# (Rayleigh 0.23 um), but they fall on neighbouring 0.25 um camera pixels. Rendered on a
# 0.125 um grid, blurred, summed 2 x 2 and photon-counted.
OPTICS = dict(na=1.4, n=1.515, wavelength_um=0.52, z_step_um=0.2)
COARSE, FINE = 0.25, 0.125


def two_points(photons: float = 1e4, seed: int = 0):
    nz, ny, nx = 16, 32, 32
    psf_fine = np.asarray(eprjax.widefield_psf((16, 32, 32), pixel_size_um=FINE, **OPTICS), np.float64)
    obj = np.zeros((nz, 2 * ny, 2 * nx))
    y0, x0 = ny, nx - 2  # fine 30 and 33: coarse pixels 15 and 16
    obj[nz // 2, y0, x0] = obj[nz // 2, y0, x0 + 3] = 1000.0
    model = Model(psf_fine, (nz, ny, nx), obj.shape, (0, 0, 0), (1, 2, 2))
    g = model.forward(obj) + 1.0
    g = np.random.default_rng(seed).poisson(g * photons) / photons
    return g.astype(np.float32), psf_fine.astype(np.float32), (nz // 2, y0, x0)


def dip(profile: np.ndarray, a: int, b: int) -> float:
    """1 - the lowest value strictly between a and b over the lower of the two peaks (each the
    highest within one voxel of a, b): 0 when there is no dip."""
    low = profile[a + 1 : b].min()
    return max(0.0, 1 - low / min(profile[a - 1 : a + 2].max(), profile[b - 1 : b + 2].max()))


def test_two_close_points_separate_only_on_the_fine_grid(tmp_path) -> None:
    """super_epr (a PSF file on the fine grid) against epr on the coarse grid: the dip between
    the two points, the coarse restoration brought to the fine grid by band-limited
    interpolation to be measured the same way."""
    g, psf_fine, (z, y, x) = two_points()
    psf_coarse = np.asarray(eprjax.widefield_psf((16, 16, 16), pixel_size_um=COARSE, oversample=4, **OPTICS))
    eprjax.write(tmp_path / "data.i2i", eprjax.Image(g, voxel_size_um=(0.2, COARSE, COARSE)))
    eprjax.write(tmp_path / "fine.i2i", eprjax.Image(psf_fine, voxel_size_um=(0.2, FINE, FINE)))
    eprjax.write(tmp_path / "coarse.i2i", eprjax.Image(psf_coarse, voxel_size_um=(0.2, COARSE, COARSE)))
    dips = {}
    for alpha in ("1e-6", "1e-7"):
        assert cli(["super_epr", "-psf", str(tmp_path / "fine"), "-sm", alpha, str(tmp_path / "data"), str(tmp_path / "s")]) == 0
        out = eprjax.read(tmp_path / "s.i2i")
        assert out.shape == (16, 64, 64) and out.voxel_size_um == pytest.approx((0.2, FINE, FINE))
        fine = np.asarray(out.data)[z]
        assert cli(["epr", "-psf", str(tmp_path / "coarse"), "-sm", alpha, str(tmp_path / "data"), str(tmp_path / "c")]) == 0
        coarse = np.asarray(eprjax.fine_psf(np.asarray(eprjax.read(tmp_path / "c.i2i").data)[z - 1 : z + 2], 2, pixel=False))[1]
        dips[alpha] = (dip(fine[y], x, x + 3), dip(coarse[y], x, x + 3))
    # measured: super 0.18 and 0.41, coarse 0 and 0
    assert dips["1e-7"][0] > 0.25 and dips["1e-6"][0] > 0.08
    assert dips["1e-7"][1] < 0.02 and dips["1e-6"][1] < 0.02


def test_super_epr_cli(tmp_path, capsys) -> None:
    """The command: only -sm (and -psf), the output's shape and voxel sizes k times the
    input's, the data-sampled PSF interpolated (and said so with -V), -co/-it refused."""
    psf = gaussian_psf((7, 9, 9), (1.5, 1.2, 1.2))
    g = blurred(scene((6, 12, 10)), psf, noise=0.01)
    eprjax.write(tmp_path / "g.i2i", eprjax.Image(g, voxel_size_um=(0.3, 0.2, 0.2), origin=(5, 7)))
    eprjax.write(tmp_path / "psf.i2i", eprjax.Image(psf, voxel_size_um=(0.3, 0.2, 0.2)))
    assert cli(["super_epr", "-V", "-psf", str(tmp_path / "psf"), "-sm", "1e-3", str(tmp_path / "g"), str(tmp_path / "out")]) == 0
    err = capsys.readouterr().err
    assert "band-limited interpolation" in err and "factor z 1, y 2, x 2" in err
    out = eprjax.read(tmp_path / "out.i2i")
    assert out.shape == (6, 24, 20)
    assert out.voxel_size_um == pytest.approx((0.3, 0.1, 0.1))
    assert out.origin == (10, 14)
    assert any("onto a 6x24x20 grid" in line for line in out.history)
    # the original's fixed settings cannot be changed
    for flags in (["-co", "0.0001"], ["-it", "10"], ["-super", "3"]):
        code = cli(["super_epr", *flags, "-psf", str(tmp_path / "psf"), "-sm", "1e-3", str(tmp_path / "g"), str(tmp_path / "o2")])
        assert code == 2
        assert "unknown" in capsys.readouterr().err.lower()
    assert not (tmp_path / "o2.i2i").exists()


def test_epr_super_flags_and_psf_sampling(tmp_path, capsys) -> None:
    psf = gaussian_psf((7, 9, 9), (1.5, 1.2, 1.2))
    g = blurred(scene((6, 12, 10)), psf, noise=0.01)
    eprjax.write(tmp_path / "g.i2i", eprjax.Image(g, voxel_size_um=(0.3, 0.2, 0.2)))
    eprjax.write(tmp_path / "fine.i2i", eprjax.Image(psf, voxel_size_um=(0.15, 0.1, 0.1)))
    eprjax.write(tmp_path / "odd.i2i", eprjax.Image(psf, voxel_size_um=(0.3, 0.13, 0.13)))
    args = ["-psf", str(tmp_path / "fine"), "-sm", "1e-3", "-it", "50", str(tmp_path / "g")]
    assert cli(["epr", "-V", "-super", "2", "-superz", "2", *args, str(tmp_path / "out")]) == 0
    err = capsys.readouterr().err
    assert "interpolation" not in err  # already on the fine grid
    out = eprjax.read(tmp_path / "out.i2i")
    assert out.shape == (12, 24, 20) and out.voxel_size_um == pytest.approx((0.15, 0.1, 0.1))
    # a PSF sampled like neither grid: resampled to the fine grid's 0.15 x 0.1 um
    assert cli(["epr", "-V", "-super", "2", "-psf", str(tmp_path / "odd"), *args[2:], str(tmp_path / "o2")]) == 0
    assert "(0.3 x 0.13 x 0.13 um, 7x9x9) brought to the restoration grid's sampling (0.3 x 0.1 x 0.1 um)" in capsys.readouterr().err
    # the fine PSF given to plain epr: resampled to the data's sampling
    assert cli(["epr", "-V", *args, str(tmp_path / "o3")]) == 0
    assert "brought to the data's sampling (0.3 x 0.2 x 0.2 um)" in capsys.readouterr().err
    assert cli(["epr", "-super", "0", *args, str(tmp_path / "o4")]) == 2
    assert "-super" in capsys.readouterr().err


def test_preppsf_super_writes_the_fine_psf(tmp_path) -> None:
    bead = np.asarray(eprjax.widefield_psf((24, 48, 48), pixel_size_um=0.1, z_step_um=0.25, na=1.2, n=1.33, wavelength_um=0.6))
    bead = (1e4 * bead + 100).astype(np.float32)
    eprjax.write(tmp_path / "bead.i2i", eprjax.Image(bead, voxel_size_um=(0.25, 0.1, 0.1)))
    base = ["preppsf", "-NA", "1.2", "-n", "1.33", "-lambda", "0.6", "-subxy", "31", "-subz", "21", str(tmp_path / "bead")]
    assert cli([*base, str(tmp_path / "psf")]) == 0
    assert cli([*base[:-1], "-super", "2", base[-1], str(tmp_path / "psf2")]) == 0
    coarse, fine = eprjax.read(tmp_path / "psf.i2i"), eprjax.read(tmp_path / "psf2.i2i")
    assert fine.shape == (21, 62, 62) and fine.voxel_size_um == pytest.approx((0.25, 0.05, 0.05))
    assert np.asarray(fine.data).sum() == pytest.approx(np.asarray(coarse.data).sum(), rel=1e-4)
    np.testing.assert_allclose(np.asarray(fine.data), np.asarray(eprjax.fine_psf(np.asarray(coarse.data), 2)), rtol=0, atol=1e-6)


def test_segments_on_the_fine_grid() -> None:
    """Segmented and whole restorations onto the finer grid agree (as on the data grid)."""
    psf = gaussian_psf((7, 9, 9), (1.5, 1.5, 1.5))
    truth = scene((8, 64, 56), seed=5)
    g = np.asarray(block_sum(blurred(truth, psf, noise=0.0).astype(np.float64), (1, 2, 2)), np.float32)
    whole = eprjax.restore(g, psf, alpha=1e-3, factor=2, tol=1e-4, max_iterations=500)
    parts = eprjax.restore(g, psf, alpha=1e-3, factor=2, tol=1e-4, max_iterations=500, segment=(18, 16))
    assert parts.value.shape == whole.value.shape == (8, 64, 56)
    plan = eprjax.plan_segments(g.shape, psf, segment=(18, 16), factor=(1, 2, 2))
    assert plan.count > 1 and "finer" in plan.describe()
    spread = np.abs(np.asarray(parts.value) - np.asarray(whole.value)).max() / np.asarray(whole.value).max()
    assert spread < 0.01
