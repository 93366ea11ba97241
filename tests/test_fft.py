"""The imaging operator's convolutions on the host FFT (scipy.fft with threads, called from the
compiled program) against NumPy's FFT and against XLA's: values, the transpose, batches,
gradients, several devices, and the choice between the two."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import eprjax
from eprjax import _fft
from eprjax._operator import adjoint, forward, make_grid, psf_otf

from .conftest import ROOT, assert_ended_cleanly, interrupted, run_eprjax
from .test_gradients import CASES
from .test_restore import blurred, gaussian_psf, scene


@pytest.fixture
def fft_mode(monkeypatch: pytest.MonkeyPatch):
    """Sets EPRJAX_FFT for the test, with no program traced under another choice."""
    def use(mode: str) -> None:
        monkeypatch.setenv("EPRJAX_FFT", mode)
        _fft.forget_traces()

    yield use
    _fft.forget_traces()


def _reference(x, kernel, conjugate=False):
    """The circular convolution (or correlation) in float64 NumPy over the last three axes."""
    spectrum = np.fft.fftn(np.asarray(kernel, np.float64))
    spectrum = np.conj(spectrum) if conjugate else spectrum
    return np.fft.ifftn(np.fft.fftn(np.asarray(x, np.float64), axes=(-3, -2, -1)) * spectrum, axes=(-3, -2, -1)).real


def test_host_convolution_equals_numpy(fft_mode) -> None:
    """The host convolution and correlation, on one volume and vmapped over a batch (the OTF
    shared, and the OTF batched too), within float32 rounding (measured ~1e-7 of the peak)."""
    fft_mode("host")
    rng = np.random.default_rng(0)
    shape = (6, 10, 9)  # odd X: the real FFT's last axis is not half of an even length
    x = rng.normal(size=(3, *shape)).astype(np.float32)
    kernels = rng.normal(size=(3, *shape)).astype(np.float32)
    otfs = jnp.fft.rfftn(jnp.asarray(kernels), axes=(-3, -2, -1))
    for conjugate in (False, True):
        one = jax.jit(lambda x, o: _fft.convolve(x, o, shape, conjugate=conjugate))
        want = _reference(x[0], kernels[0], conjugate)
        np.testing.assert_allclose(one(x[0], otfs[0]), want, atol=2e-6 * np.abs(want).max())
        shared = jax.vmap(one, in_axes=(0, None))(x, otfs[0])
        np.testing.assert_allclose(shared, _reference(x, kernels[0], conjugate), atol=2e-6 * np.abs(want).max())
        both = jax.vmap(one)(x, otfs)
        want = np.stack([_reference(a, k, conjugate) for a, k in zip(x, kernels, strict=True)])
        np.testing.assert_allclose(both, want, atol=2e-6 * np.abs(want).max())
        only_otf = jax.vmap(one, in_axes=(None, 0))(x[0], otfs)
        want = np.stack([_reference(x[0], k, conjugate) for k in kernels])
        np.testing.assert_allclose(only_otf, want, atol=2e-6 * np.abs(want).max())


@pytest.mark.parametrize("where", ["xla", "host"])
def test_the_pruned_convolutions_crop_and_place(fft_mode, where) -> None:
    """convolve_crop (the convolution on a region alone) and place_convolve (of an array placed
    in zeros), whose host FFT transforms one axis at a time on what is kept or not zero,
    against the NumPy convolution of the whole grid cropped or of the array zero-padded: one
    volume, a batch (the OTF shared, batched, and alone batched), both kernels' orientations;
    and their vector-Jacobian products in the signal are each other (the custom rule), all
    within float32 rounding (measured ~1e-7 of the peak)."""
    fft_mode(where)
    rng = np.random.default_rng(7)
    shape, region = (9, 12, 11), ((2, 7), (1, 10), (3, 11))  # odd X; a region off the centre, to the far x edge
    inner = tuple(slice(a, b) for a, b in region)
    kernels = rng.normal(size=(3, *shape)).astype(np.float32)
    otfs = jnp.fft.rfftn(jnp.asarray(kernels), axes=(-3, -2, -1))
    x = rng.normal(size=(3, *shape)).astype(np.float32)
    r = rng.normal(size=(3, 5, 9, 8)).astype(np.float32)
    placed = np.zeros((3, *shape), np.float32)
    placed[(slice(None), *inner)] = r
    for conjugate in (False, True):
        crop = jax.jit(lambda x, o: _fft.convolve_crop(x, o, shape, inner, conjugate=conjugate))
        place = jax.jit(lambda r, o: _fft.place_convolve(r, o, shape, region, conjugate=conjugate))
        cases = (  # (results, the kernel of each member)
            ((crop(x[0], otfs[0])[None], place(r[0], otfs[0])[None]), (0,)),
            ((jax.vmap(crop, in_axes=(0, None))(x, otfs[0]), jax.vmap(place, in_axes=(0, None))(r, otfs[0])), (0, 0, 0)),
            ((jax.vmap(crop)(x, otfs), jax.vmap(place)(r, otfs)), (0, 1, 2)),
        )
        for (got_crop, got_place), kernel in cases:
            want = np.stack([_reference(x[i], kernels[k], conjugate)[inner] for i, k in enumerate(kernel)])
            np.testing.assert_allclose(got_crop, want, atol=2e-6 * np.abs(want).max())
            want = np.stack([_reference(placed[i], kernels[k], conjugate) for i, k in enumerate(kernel)])
            np.testing.assert_allclose(got_place, want, atol=2e-6 * np.abs(want).max())
        alone = jax.vmap(crop, in_axes=(None, 0))(x[0], otfs)
        want = np.stack([_reference(x[0], k, conjugate)[inner] for k in kernels])
        np.testing.assert_allclose(alone, want, atol=2e-6 * np.abs(want).max())
        alone = jax.vmap(place, in_axes=(None, 0))(r[0], otfs)
        want = np.stack([_reference(placed[0], k, conjugate) for k in kernels])
        np.testing.assert_allclose(alone, want, atol=2e-6 * np.abs(want).max())
        # the transposes: the crop's pullback places, the placing's pullback crops (the other kernel)
        _, pullback = jax.vjp(lambda x: _fft.convolve_crop(x, otfs[0], shape, inner, conjugate=conjugate), jnp.asarray(x[0]))
        want = _reference(placed[0], kernels[0], not conjugate)
        np.testing.assert_allclose(pullback(jnp.asarray(r[0]))[0], want, atol=2e-6 * np.abs(want).max())
        _, pullback = jax.vjp(lambda r: _fft.place_convolve(r, otfs[0], shape, region, conjugate=conjugate), jnp.asarray(r[0]))
        want = _reference(x[0], kernels[0], not conjugate)[inner]
        np.testing.assert_allclose(pullback(jnp.asarray(x[0]))[0], want, atol=2e-6 * np.abs(want).max())


def test_successive_host_convolutions_keep_their_results(fft_mode) -> None:
    """The host FFT reuses its spectrum buffer from call to call and writes its results into
    XLA's buffers: results already handed to the program must not change when the next call
    runs."""
    fft_mode("host")
    rng = np.random.default_rng(3)
    shape = (4, 8, 6)
    x, y, kernel = (rng.normal(size=shape).astype(np.float32) for _ in range(3))
    otf = jnp.fft.rfftn(jnp.asarray(kernel))

    @jax.jit
    def both(x, y):
        a = _fft.convolve(x, otf, shape)
        b = _fft.convolve(y + 0 * a, otf, shape)  # after a, through the same buffers
        return a, b, _fft.convolve(a + b, otf, shape, conjugate=True)

    a, b, c = both(x, y)
    scale = np.abs(_reference(x, kernel)).max()
    np.testing.assert_allclose(a, _reference(x, kernel), atol=2e-6 * scale)
    np.testing.assert_allclose(b, _reference(y, kernel), atol=2e-6 * scale)
    np.testing.assert_allclose(c, _reference(_reference(x, kernel) + _reference(y, kernel), kernel, True), atol=1e-5 * scale)


@pytest.mark.parametrize("where", ["xla", "host"])
def test_the_orthonormal_real_ffts_are_numpys(fft_mode, where) -> None:
    """rfft3 and irfft3 (the spectral iteration's transforms) against NumPy's orthonormal
    real FFT, for even and odd last axes, on one volume and vmapped (float32 round-off: 1e-6
    of the largest value); irfft3 works in its input's buffer only where nothing else reads
    it: an input read again afterwards is unchanged."""
    fft_mode(where)
    rng = np.random.default_rng(5)
    for shape in ((6, 10, 8), (5, 7, 9)):
        x = rng.normal(size=(2, *shape)).astype(np.float32)
        want = np.fft.rfftn(x.astype(np.float64), axes=(-3, -2, -1), norm="ortho")
        got = jax.jit(_fft.rfft3)(x[0])
        np.testing.assert_allclose(got, want[0], atol=1e-6 * np.abs(want).max())
        np.testing.assert_allclose(jax.jit(jax.vmap(_fft.rfft3))(x), want, atol=1e-6 * np.abs(want).max())
        spectrum = jnp.asarray(want.astype(np.complex64))

        @jax.jit
        def back_and_again(s):
            return _fft.irfft3(s, shape), s + 0

        back, again = back_and_again(spectrum[0])
        np.testing.assert_allclose(back, x[0], atol=1e-6 * np.abs(x).max())
        np.testing.assert_array_equal(again, spectrum[0])
        np.testing.assert_allclose(jax.jit(jax.vmap(lambda s: _fft.irfft3(s, shape)))(spectrum), x, atol=1e-6 * np.abs(x).max())


@pytest.mark.parametrize("last", [1, 2, 7, 8])
def test_parseval_weights_give_the_inner_product(last) -> None:
    """<x, y> = sum w Re(X conj(Y)) over the orthonormal half spectra, for odd and even
    last axes (float64: to round-off)."""
    rng = np.random.default_rng(last)
    x, y = rng.normal(size=(2, 3, 4, last))
    spectra = np.fft.rfftn(np.stack([x, y]), axes=(-3, -2, -1), norm="ortho")
    w = _fft.parseval_weights(last, np.float64)
    assert np.isclose(np.sum(w * np.real(spectra[0] * np.conj(spectra[1]))), np.sum(x * y), rtol=1e-12, atol=1e-12)


def test_host_operator_and_its_transpose(fft_mode) -> None:
    """<H f, r> = <f, H^T r> on a padded grid with the host FFT (float32 sums of a few
    thousand terms: to 1e-5 of |Hf| |r|), and H's vector-Jacobian product in f, which goes
    through the custom rule, is H^T r."""
    fft_mode("host")
    rng = np.random.default_rng(1)
    grid = make_grid((5, 8, 7), (2, 3, 3))
    otf, _ = psf_otf(jnp.asarray(gaussian_psf((5, 7, 7), (1.0, 1.5, 1.5))), grid)
    f = jnp.asarray(rng.normal(size=grid.object_shape), jnp.float32)
    r = jnp.asarray(rng.normal(size=grid.data_shape), jnp.float32)
    hf = jax.jit(lambda f: forward(otf, f, grid))(f)
    htr = jax.jit(lambda r: adjoint(otf, r, grid))(r)
    assert hf.dtype == jnp.float32 and htr.dtype == jnp.float32
    assert abs(float(jnp.sum(hf * r) - jnp.sum(f * htr))) < 1e-5 * float(jnp.linalg.norm(hf) * jnp.linalg.norm(r))
    _, pullback = jax.vjp(lambda f: forward(otf, f, grid), f)
    np.testing.assert_allclose(pullback(r)[0], htr, atol=1e-6 * float(jnp.abs(htr).max()))


def _gradients(fft_mode, mode, loss, *args):
    fft_mode(mode)
    return [np.asarray(x) for x in jax.jit(jax.grad(loss, argnums=tuple(range(len(args)))))(*args)]


def test_host_convolution_gradients(fft_mode) -> None:
    """Reverse-mode gradients of a loss through host convolutions, in the signal and in the
    kernel (through its OTF), equal JAX's own through XLA's FFT (float32: 1e-5 of the largest)."""
    rng = np.random.default_rng(2)
    shape = (4, 6, 5)
    x, kernel = (jnp.asarray(rng.normal(size=shape), jnp.float32) for _ in range(2))

    def loss(x, kernel):
        y = _fft.convolve(x, jnp.fft.rfftn(kernel), shape)
        z = _fft.convolve(jnp.sin(y), jnp.fft.rfftn(kernel), shape, conjugate=True)
        return jnp.sum(z * z)

    want = _gradients(fft_mode, "xla", loss, x, kernel)
    for got, ref in zip(_gradients(fft_mode, "host", loss, x, kernel), want, strict=True):
        np.testing.assert_allclose(got, ref, atol=1e-5 * np.abs(ref).max())


def test_restoration_on_the_host_fft_equals_xla(fft_mode) -> None:
    """The same restoration, and its batch, with either FFT: both stop at a relative dual
    gradient of 1e-5, so they agree to about that (measured 1.3e-5 of the peak)."""
    psf = gaussian_psf((9, 9, 9), (2.0, 1.5, 1.5))
    g = (blurred(scene((12, 40, 40)), psf) * 100).astype(np.float32)
    out = {}
    for mode in ("xla", "host"):
        fft_mode(mode)
        out[mode] = eprjax.restore(np.stack([g, 0.5 * g]), psf, alpha=1e-3, tol=1e-5).value
    assert out["host"].dtype == np.float32
    np.testing.assert_allclose(out["host"], out["xla"], atol=1e-4 * float(np.abs(out["xla"]).max()))


@pytest.mark.parametrize("case", list(CASES))
def test_implicit_gradients_on_the_host_fft(fft_mode, case) -> None:
    """The restoration's implicit gradients in the data, the PSF and alpha through the host
    FFT equal those through XLA's (test_gradients checks the latter against finite
    differences), in float32 for test_gradients' cases: within 1e-3 of the largest, as both
    restorations and gradient solves stop at 1e-6 with different rounding."""
    c = CASES[case]
    psf = gaussian_psf((5, 5, 5), (1.2, 1.0, 1.0))
    g = jnp.asarray(blurred(scene(c["shape"]), psf), jnp.float32)
    fine = tuple(n * k for n, k in zip(c["shape"], (1, c["factor"], c["factor"]), strict=True))
    target = jnp.asarray(np.random.default_rng(7).uniform(0, 2 * float(g.mean()), size=fine), jnp.float32)

    def loss(g, h, alpha):
        f = eprjax.restore(g, h, alpha=alpha, tol=1e-6, max_iterations=2000, pad=c["pad"], factor=c["factor"]).value
        return jnp.sum((f - target) ** 2)

    args = (g, jnp.asarray(psf), jnp.asarray(c["alpha"], jnp.float32))
    want = _gradients(fft_mode, "xla", loss, *args)
    for got, ref in zip(_gradients(fft_mode, "host", loss, *args), want, strict=True):
        np.testing.assert_allclose(got, ref, atol=1e-3 * np.abs(ref).max())


def test_host_fft_only_where_it_runs_on_a_cpu(fft_mode) -> None:
    """With EPRJAX_FFT=host the compiled CPU program calls the host FFT and holds no XLA FFT
    (double precision excepted); with xla it holds no callback."""
    grid = make_grid((4, 8, 8), (2, 2, 2))
    otf, _ = psf_otf(jnp.asarray(gaussian_psf((3, 5, 5), (1.0, 1.0, 1.0))), grid)
    f = jnp.ones(grid.object_shape, jnp.float32)
    texts = {}
    for mode in ("host", "xla"):
        fft_mode(mode)
        texts[mode] = jax.jit(lambda f: forward(otf, f, grid)).lower(f).compile().as_text().lower()
    assert "callback" in texts["host"] and " fft(" not in texts["host"]
    assert "callback" not in texts["xla"] and "fft(" in texts["xla"]
    fft_mode("host")
    with jax.enable_x64(True):  # double precision stays on XLA (see _fft.convolve)
        text = jax.jit(lambda f: forward(otf.astype(jnp.complex128), f, grid)).lower(f.astype(jnp.float64)).compile().as_text()
    assert "callback" not in text.lower()


def test_the_automatic_choice(monkeypatch: pytest.MonkeyPatch) -> None:
    """auto: the host FFT for large grids when several threads are allowed; the threads from
    EPRJAX_FFT_THREADS or the cores this process may use; bad values refused by name."""
    monkeypatch.delenv("EPRJAX_FFT", raising=False)
    monkeypatch.setenv("EPRJAX_FFT_THREADS", "2")
    large, small = (64, 256, 256), (16, 64, 64)
    assert _fft.fft_threads() == 2
    assert _fft.uses_host_fft(large) and not _fft.uses_host_fft(small)
    monkeypatch.setenv("EPRJAX_FFT_THREADS", "1")
    assert not _fft.uses_host_fft(large)  # one thread: XLA's FFT is as fast, and cacheable
    monkeypatch.setenv("EPRJAX_FFT", "host")
    assert _fft.uses_host_fft(small)
    monkeypatch.setenv("EPRJAX_FFT", "xla")
    monkeypatch.setenv("EPRJAX_FFT_THREADS", "8")
    assert not _fft.uses_host_fft(large)
    monkeypatch.delenv("EPRJAX_FFT_THREADS")
    assert _fft.fft_threads() == len(os.sched_getaffinity(0))
    for name, value in (("EPRJAX_FFT", "fftw"), ("EPRJAX_FFT_THREADS", "0"), ("EPRJAX_FFT_THREADS", "two")):
        monkeypatch.setenv(name, value)
        with pytest.raises(eprjax.ParameterError, match=name):
            _fft.uses_host_fft(large)
        monkeypatch.setenv(name, {"EPRJAX_FFT": "auto", "EPRJAX_FFT_THREADS": "2"}[name])


def test_a_batch_counts_its_voxels_for_the_automatic_choice(monkeypatch: pytest.MonkeyPatch) -> None:
    """auto counts a batch's voxels (segments restored together under vmap, whose axis the
    convolution does not see): two grids of half the threshold's voxels go to the host FFT
    together, one alone stays on XLA's; traced through the restoration's batched path."""
    from eprjax._restore import _batched

    monkeypatch.delenv("EPRJAX_FFT", raising=False)
    monkeypatch.setenv("EPRJAX_FFT_THREADS", "2")
    half = (_fft.HOST_MIN_VOXELS // (2 * 256 * 256), 256, 256)
    assert not _fft.uses_host_fft(half)
    with _fft.batched(2):
        assert _fft.uses_host_fft(half)
    assert not _fft.uses_host_fft(half)
    otf = jnp.ones((half[0], 256, 129), jnp.complex64)

    def traced(count: int) -> str:
        stack = jax.ShapeDtypeStruct((count, *half), jnp.float32)
        return str(jax.make_jaxpr(lambda x: _batched(lambda g: _fft.convolve(g, otf, half), 4, x))(stack))

    assert "buffer_callback" in traced(2) and "buffer_callback" not in traced(1)


def test_a_bad_fft_setting_is_one_line(workdir, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    psf = gaussian_psf((5, 5, 5), (1.0, 1.0, 1.0))
    eprjax.write("psf.i2i", psf)
    eprjax.write("image.i2i", blurred(scene((6, 16, 16)), psf))
    monkeypatch.setenv("EPRJAX_FFT", "fftw")
    _fft.forget_traces()
    assert run_eprjax(["epr", "-psf", "psf", "-sm", "1e-3", "image", "out"]) != 0
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "EPRJAX_FFT" in err and "internal error" not in err, err
    _fft.forget_traces()


def test_several_cpu_devices_keep_xla_fft() -> None:
    """Segments spread over four (fake) CPU devices with shard_map and EPRJAX_FFT=host keep
    XLA's FFT (host callbacks from four such devices hung on two cores) and give what one
    device gives (to the solver's tolerance)."""
    script = textwrap.dedent(
        """
        import os
        import numpy as np, jax, eprjax
        from tests.test_restore import gaussian_psf, scene, blurred
        from eprjax import _fft
        assert len(jax.local_devices()) == 4
        psf = gaussian_psf((9, 9, 9), (2.0, 1.5, 1.5))
        g = blurred(scene((12, 64, 64)), psf)
        os.environ["EPRJAX_FFT"] = "xla"
        one = eprjax.restore(g, psf, alpha=1e-3, tol=1e-5, segment=(32, 32), devices=1).value
        os.environ["EPRJAX_FFT"] = "host"
        assert not _fft.uses_host_fft((64, 256, 256))
        four = eprjax.restore(g, psf, alpha=1e-3, tol=1e-5, segment=(32, 32), devices=4).value
        print(float(np.abs(one - four).max() / np.abs(one).max()))
        """
    )
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=4", "PYTHONPATH": str(ROOT), "JAX_PLATFORMS": "cpu"}
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, cwd=ROOT, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert float(done.stdout.split()[-1]) < 1e-4


@pytest.mark.parametrize("verbose", [[], ["-V"]], ids=["quiet", "verbose"])
def test_sigterm_ends_a_restoration_on_the_host_fft(tmp_path, verbose) -> None:
    """SIGTERM while epr restores on the host FFT (a callback inside the compiled loop): the
    process ends within 2 s, status 130, one line, no output and no temporary file left, with
    and without progress reports (measured on the shared light-sheet stack: 0.7 and 0.1 s)."""
    import signal
    import time

    psf = gaussian_psf((9, 9, 9), (2.0, 1.5, 1.5))
    eprjax.write(tmp_path / "psf.i2i", psf)
    eprjax.write(tmp_path / "image.i2i", (blurred(scene((24, 96, 96)), psf) * 100).astype(np.float32))
    script = "import sys; from eprjax.cli import epr_main; sys.argv[0] = 'epr'; epr_main()"
    argv = [sys.executable, "-c", script, *verbose, "-psf", "psf.i2i", "-sm", "1e-6", "-co", "1e-12", "-it", "1000000", "image.i2i", "out.i2i"]
    env = {**os.environ, "EPRJAX_FFT": "host", "PYTHONPATH": str(ROOT), "JAX_PLATFORMS": "cpu", "EPRJAX_CACHE_DIR": str(tmp_path / "cache")}

    def iterating(p) -> None:
        time.sleep(12.0)  # JAX loaded, the restoration compiled and iterating (about 10 ms each)
        assert p.poll() is None

    code, took, rest = interrupted(argv, cwd=tmp_path, signum=signal.SIGTERM, ready=iterating, env=env)
    assert_ended_cleanly(code, took, rest, tmp_path, ["image.i2i", "psf.i2i"])
