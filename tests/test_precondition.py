"""The solver's preconditioner: the cosine filter against SciPy's DCT, the same minimiser with
and without it (to what the tolerance implies), fewer iterations on a dense object, switched
off on a sparse one, and the environment variable's errors."""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.fft
import scipy.ndimage

import eprjax
from eprjax import _fft
from eprjax._operator import make_grid
from eprjax._restore import PRECONDITION_ACTIVE, _cosine_power, _solve_advance, _solve_start, describe_preconditioner, precondition_mode

from .test_restore import gaussian_psf


@pytest.fixture
def mode(monkeypatch):
    """Set EPRJAX_PRECONDITION (traced restorations forgotten before and after)."""

    def use(value: str) -> None:
        monkeypatch.setenv("EPRJAX_PRECONDITION", value)
        _fft.forget_traces()

    yield use
    monkeypatch.delenv("EPRJAX_PRECONDITION", raising=False)
    _fft.forget_traces()


@pytest.mark.parametrize("where", ["xla", "host"])
def test_the_cosine_filter_is_scipys_dct_filter_and_its_own_transpose(monkeypatch, where):
    monkeypatch.setenv("EPRJAX_FFT", where)
    rng = np.random.default_rng(0)
    x, inv = rng.random((5, 7, 9)), rng.random((5, 7, 9))
    want = scipy.fft.idctn(scipy.fft.dctn(x, type=2, norm="ortho") * inv, type=2, norm="ortho")
    apply = jax.jit(_fft.cosine_filter)
    got = np.asarray(apply(jnp.asarray(x, jnp.float32), jnp.asarray(inv, jnp.float32)))
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-6 * np.abs(want).max())
    batch = rng.random((3, 5, 7, 9)).astype(np.float32)
    batched = np.asarray(jax.vmap(apply, in_axes=(0, None))(batch, inv.astype(np.float32)))
    np.testing.assert_allclose(batched[2], np.asarray(apply(batch[2], inv.astype(np.float32))), rtol=0, atol=1e-6)
    # symmetric: <M a, b> = <a, M b>, and the VJP is M itself
    a, b = rng.random((2, 5, 7, 9)).astype(np.float32)
    ma, mb = (np.asarray(apply(y, inv.astype(np.float32)), np.float64) for y in (a, b))
    assert np.vdot(ma, b) == pytest.approx(np.vdot(a, mb), rel=1e-5)
    _, pullback = jax.vjp(lambda y: _fft.cosine_filter(y, jnp.asarray(inv, jnp.float32)), jnp.asarray(a))
    np.testing.assert_allclose(np.asarray(pullback(jnp.asarray(b))[0]), mb, rtol=0, atol=1e-5)
    _fft.forget_traces()


@pytest.mark.parametrize(("psf_shape", "shape"), [((31, 31, 31), (20, 40, 33)), ((9, 8, 7), (4, 3, 5)), ((33, 21, 11), (40, 48, 51))])
def test_the_cosine_power_is_the_doubled_grids_otf(psf_shape, shape):
    """The padded preconditioner's sigma: |OTF|^2 of the PSF on a grid twice the data's (its
    origin at 0, what the doubled grid cannot hold cut off), at the first n frequencies per
    axis; here by NumPy's FFT in double precision, as the solver computed it before."""
    rng = np.random.default_rng(0)
    psf = rng.random(psf_shape)
    twice = tuple(2 * n for n in shape)
    kernel = np.zeros(twice)
    for index in np.ndindex(psf_shape):
        offset = [i - p // 2 for i, p in zip(index, psf_shape, strict=True)]
        if all(-n <= o < n for o, n in zip(offset, shape, strict=True)):
            kernel[tuple(o % m for o, m in zip(offset, twice, strict=True))] += psf[index]
    expected = (np.abs(np.fft.rfftn(kernel)) ** 2)[: shape[0], : shape[1], : shape[2]]
    got = np.asarray(_cosine_power(jnp.asarray(psf, jnp.float32), shape), np.float64)
    # float32 sums of at most a few thousand terms of size <= the total: relative to the largest
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-5 * expected.max())


@pytest.mark.parametrize("shape", [(1, 1, 1), (1, 2, 3), (2, 2, 2), (4, 4, 1), (6, 8, 10), (7, 9, 11), (3, 10, 5)])
def test_xlas_cosine_filter_by_one_fft_is_exact_in_double_precision(shape):
    """The single-FFT (Makhoul) cosine filter against SciPy's separable DCTs, to double
    precision's round-off, for odd, even and length-1 and -2 axes (where the reflections meet)."""
    rng = np.random.default_rng(1)
    x, inv = rng.standard_normal(shape), rng.uniform(0.5, 2, shape)
    want = scipy.fft.idctn(scipy.fft.dctn(x, type=2, norm="ortho") * inv, type=2, norm="ortho")
    with jax.enable_x64(True):
        got = np.asarray(jax.jit(_fft._cosine_xla)(jnp.asarray(x), jnp.asarray(inv)))
    assert got.dtype == np.float64
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-13 * np.abs(want).max())


def _dense(shape, seed=0):
    """A dense positive texture blurred, with 1 % noise."""
    rng = np.random.default_rng(seed)
    t = scipy.ndimage.gaussian_filter(rng.normal(size=shape), (1, 2, 2))
    truth = np.maximum(t - 0.2 * t.std(), 0)
    psf = gaussian_psf((15, 15, 15), (2.5, 1.5, 1.5))
    g = scipy.ndimage.convolve(truth, psf, mode="wrap")
    return (g + 0.01 * g.max() * rng.normal(size=shape)).astype(np.float32), psf


@pytest.mark.parametrize("pad", [0, None], ids=["periodic", "padded"])
def test_the_same_minimiser_in_fewer_iterations_on_a_dense_object(mode, pad):
    g, psf = _dense((16, 48, 48))
    mode("none")
    plain = eprjax.restore(g, psf, alpha=1e-3, tol=1e-6, max_iterations=5000, pad=pad)
    loose_plain = eprjax.restore(g, psf, alpha=1e-3, tol=1e-3, max_iterations=5000, pad=pad)
    mode("auto")
    pre = eprjax.restore(g, psf, alpha=1e-3, tol=1e-6, max_iterations=5000, pad=pad)
    loose = eprjax.restore(g, psf, alpha=1e-3, tol=1e-3, max_iterations=5000, pad=pad)
    assert bool(plain.converged) and bool(pre.converged)
    # both within 1e-6 of stationarity: the same minimiser to far below the tolerance that counts
    rel = np.linalg.norm(np.asarray(pre.value) - np.asarray(plain.value)) / np.linalg.norm(np.asarray(plain.value))
    assert rel < 1e-4, rel
    assert int(loose.iterations) <= 0.6 * int(loose_plain.iterations), (int(loose.iterations), int(loose_plain.iterations))
    assert int(pre.iterations) <= 0.6 * int(plain.iterations), (int(pre.iterations), int(plain.iterations))


def test_a_sparse_object_turns_the_preconditioner_off(mode):
    rng = np.random.default_rng(1)
    f = np.zeros((16, 48, 48))
    f[tuple(rng.integers(0, n, 12) for n in f.shape)] = 100.0
    psf = gaussian_psf((15, 15, 15), (2.5, 1.5, 1.5))
    g = scipy.ndimage.convolve(f, psf, mode="wrap").astype(np.float32)
    grid = make_grid(g.shape, (0, 0, 0))
    mode("auto")
    state, otf, lam = _solve_start(jnp.asarray(g), jnp.asarray(psf), jnp.float32(1e-3), grid=grid, history_length=0)
    assert bool(state.on)
    state, _ = _solve_advance(state, jnp.asarray(g), otf, lam, jnp.float32(1e-9), jnp.asarray(30), grid=grid, track=False)
    assert float(state.active) < PRECONDITION_ACTIVE and not bool(state.on)
    dense, _ = _dense((16, 48, 48))
    state, otf, lam = _solve_start(jnp.asarray(dense), jnp.asarray(psf), jnp.float32(1e-3), grid=grid, history_length=0)
    state, _ = _solve_advance(state, jnp.asarray(dense), otf, lam, jnp.float32(1e-9), jnp.asarray(10), grid=grid, track=False)
    assert bool(state.on) and float(state.active) > PRECONDITION_ACTIVE


def test_the_setting_is_checked_and_described(mode):
    mode("sometimes")
    with pytest.raises(eprjax.ParameterError, match="EPRJAX_PRECONDITION must be one of auto, none"):
        precondition_mode()
    mode("none")
    assert describe_preconditioner(make_grid((4, 8, 8), (2, 2, 2))) == "none (EPRJAX_PRECONDITION=none)"
    mode("auto")
    assert describe_preconditioner(make_grid((4, 8, 8), (2, 2, 2))).startswith("cosine basis")
    assert describe_preconditioner(make_grid((4, 8, 8), (0, 0, 0))).startswith("Fourier basis")
    assert "(the data weighted)" in describe_preconditioner(make_grid((4, 8, 8), (0, 0, 0)), weighted=True)
    assert describe_preconditioner(make_grid((4, 8, 8), (0, 0, 0), (1, 2, 2))) == "none (a finer grid)"
    assert os.environ["EPRJAX_PRECONDITION"] == "auto"


def test_the_periodic_unweighted_iteration_runs_on_spectra():
    """Periodic, unweighted, same sampling: the state holds spectra; padded, weighted or on a
    finer grid it stays in real space (H is not a product there)."""
    psf = jnp.asarray(gaussian_psf((5, 5, 5), (1.2, 1.0, 1.0)))
    g = jnp.ones((6, 10, 9), jnp.float32)

    def spectral(grid, root=None):
        state, _, _ = _solve_start(g, psf, jnp.float32(1e-2), None, root, grid=grid, history_length=0)
        return state.spectral, state.c.dtype

    assert spectral(make_grid(g.shape, (0, 0, 0))) == (True, jnp.complex64)
    assert spectral(make_grid(g.shape, (2, 2, 2))) == (False, jnp.float32)
    assert spectral(make_grid(g.shape, (0, 0, 0)), root=jnp.ones_like(g))[0] is False
    coarse = jnp.ones((6, 5, 5), jnp.float32)
    state, _, _ = _solve_start(coarse, psf, jnp.float32(1e-2), grid=make_grid(coarse.shape, (0, 0, 0), (1, 2, 2)), history_length=0)
    assert not state.spectral


@pytest.mark.parametrize("where", ["xla", "host"])
@pytest.mark.parametrize("pre", ["auto", "none"])
def test_the_spectral_iteration_has_the_real_space_minimiser(mode, monkeypatch, where, pre):
    """On spectra and in real space (`_restore.SPECTRAL`), the same minimiser: both stopped at
    a relative gradient of 1e-6 (measured 1-5e-6 apart, RMS relative to the result); the dual handed to a
    neighbour comes back on the data grid, and a warm start from it (the segments' path)
    continues on spectra to the same result."""
    from eprjax import _restore

    monkeypatch.setenv("EPRJAX_FFT", where)
    mode(pre)
    g, psf = _dense((8, 24, 22))
    results = {}
    for spectral in (True, False):
        monkeypatch.setattr(_restore, "SPECTRAL", spectral)
        _fft.forget_traces()
        grid = make_grid(g.shape, (0, 0, 0))
        out = _restore._solve_reporting(
            jnp.asarray(g), jnp.asarray(psf), jnp.float32(1e-3), jnp.float32(1e-6), 3000, lambda *a: None, None,
            grid=grid, history_length=0, crop=False,
        )
        f, k, _, result, _, c = out
        assert int(result) == 0 and c.dtype == jnp.float32 and c.shape == g.shape
        again = _restore._solve_reporting(
            jnp.asarray(g), jnp.asarray(psf), jnp.float32(1e-3), jnp.float32(1e-6), 3000, lambda *a: None, None,
            grid=grid, history_length=0, start=c,
        )
        assert int(again[1]) < 5  # a warm start from the answer is nearly done
        results[spectral] = (np.asarray(f), np.asarray(again[0]), np.asarray(c))
    for a, b in zip(results[True], results[False], strict=True):
        assert np.linalg.norm(a - b) / np.linalg.norm(b) < 5e-5
