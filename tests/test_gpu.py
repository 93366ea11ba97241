"""On a GPU (run with `pytest -m gpu` where JAX sees one): the same restoration as on the CPU,
and gpu_epr end to end. CI has no GPU; these are deselected by default."""

from __future__ import annotations

from pathlib import Path

import jax
import numpy as np
import pytest

import eprjax
from eprjax.cli import gpu_epr_main

from .test_restore import blurred, gaussian_psf, scene

pytestmark = pytest.mark.gpu


def _gpus():
    try:
        return jax.devices("gpu")
    except RuntimeError:
        return []


@pytest.fixture
def gpu():
    devices = _gpus()
    if not devices:
        pytest.skip("JAX sees no GPU")
    return devices[0]


def test_gpu_matches_cpu(gpu) -> None:
    psf = gaussian_psf()
    g = blurred(scene((16, 48, 48)), psf)
    with jax.default_device(jax.devices("cpu")[0]):
        cpu = eprjax.restore(g, psf, alpha=1e-3, tol=1e-5, max_iterations=2000)
    with jax.default_device(gpu):
        on_gpu = eprjax.restore(jax.device_put(g, gpu), psf, alpha=1e-3, tol=1e-5, max_iterations=2000)
    assert on_gpu.value.devices() == {gpu}
    np.testing.assert_allclose(np.asarray(on_gpu.value), cpu.value, rtol=1e-3, atol=1e-3 * float(cpu.value.max()))


def test_gpu_epr(gpu, workdir: Path, capsys, monkeypatch) -> None:
    monkeypatch.setenv("EPRJAX_CACHE_DIR", str(workdir / "cache"))
    psf = gaussian_psf()
    eprjax.write("psf.i2i", psf)
    eprjax.write("image.i2i", blurred(scene((16, 48, 48)), psf) * 100)
    with pytest.raises(SystemExit) as info:
        gpu_epr_main(["-V", "-psf", "psf", "-sm", "1e-3", "image", "out"])
    err = capsys.readouterr().err
    assert info.value.code == 0, err
    assert "device cuda" in err or "device gpu" in err
    assert eprjax.read("out").shape == (16, 48, 48)


@pytest.fixture
def problem_on_gpu(gpu):
    psf = gaussian_psf()
    g = blurred(scene((16, 48, 48)), psf)
    with jax.default_device(jax.devices("cpu")[0]):
        cpu = eprjax.restore(g, psf, alpha=1e-3, tol=1e-5, max_iterations=2000)
    return g, psf, np.asarray(cpu.value)


def test_torch_cuda_in_torch_cuda_out(gpu, problem_on_gpu) -> None:
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("PyTorch sees no GPU")
    g, psf, expected = problem_on_gpu
    tg, th = torch.from_numpy(g).cuda(), torch.from_numpy(psf).cuda()
    before = tg.clone()
    with jax.default_device(gpu):
        out = eprjax.restore(tg, th, alpha=1e-3, tol=1e-5, max_iterations=2000).value
    assert isinstance(out, torch.Tensor) and out.is_cuda and out.dtype == torch.float32
    assert torch.equal(tg, before)  # the input is not changed
    np.testing.assert_allclose(out.cpu().numpy(), expected, rtol=1e-3, atol=1e-3 * expected.max())


def test_cupy_in_cupy_out(gpu, problem_on_gpu) -> None:
    cupy = pytest.importorskip("cupy")
    g, psf, expected = problem_on_gpu
    with jax.default_device(gpu):
        out = eprjax.restore(cupy.asarray(g), cupy.asarray(psf), alpha=1e-3, tol=1e-5, max_iterations=2000).value
    assert isinstance(out, cupy.ndarray) and out.dtype == cupy.float32
    np.testing.assert_allclose(cupy.asnumpy(out), expected, rtol=1e-3, atol=1e-3 * expected.max())


def test_segments_on_gpu_match_whole(gpu) -> None:
    psf = gaussian_psf()
    g = blurred(scene((12, 96, 96)), psf)
    with jax.default_device(gpu):
        whole = np.asarray(eprjax.restore(g, psf, alpha=1e-3, tol=1e-4).value)
        parts = np.asarray(eprjax.restore(g, psf, alpha=1e-3, tol=1e-4, segment=(56, 56)).value)
    inner = (slice(None), slice(8, -8), slice(8, -8))
    assert np.abs(parts - whole)[inner].max() < 0.01 * np.ptp(whole)


def test_gradient_on_gpu_matches_cpu(gpu) -> None:
    psf = gaussian_psf()
    g = blurred(scene((8, 32, 32)), psf)

    def loss(alpha):
        return jax.numpy.sum(eprjax.restore(g, psf, alpha=alpha, tol=1e-5, max_iterations=2000).value ** 2)

    with jax.default_device(jax.devices("cpu")[0]):
        cpu = float(jax.grad(loss)(1e-3))
    with jax.default_device(gpu):
        on_gpu = float(jax.grad(loss)(1e-3))
    assert on_gpu == pytest.approx(cpu, rel=1e-2)
