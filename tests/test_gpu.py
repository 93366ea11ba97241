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
