"""epr, epr_i2i and gpu_epr on the command line."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import jax
import numpy as np
import pytest

import eprjax
from eprjax.cli import epr_i2i_main, epr_main, gpu_epr_main, main

from .conftest import script
from .test_restore import blurred, gaussian_psf, scene

VOXEL = (0.25, 0.187, 0.187)


def run(entry, argv, capsys) -> tuple[int, str]:
    with pytest.raises(SystemExit) as info:
        entry(argv)
    return info.value.code, capsys.readouterr().err


@pytest.fixture
def prepared(workdir: Path, monkeypatch) -> tuple[np.ndarray, np.ndarray]:
    monkeypatch.setenv("EPRJAX_CACHE_DIR", str(workdir / "cache"))
    psf = gaussian_psf((11, 11, 11), (2.0, 1.5, 1.5))
    g = (blurred(scene((10, 24, 24)), psf) * 100).astype(np.float32)
    eprjax.write("psf_prep.i2i", psf, voxel_size_um=VOXEL)
    eprjax.write("image_prep.i2i", g, voxel_size_um=VOXEL, history=["* prepdata -bg_ref 5 5 3 -norm first image.i2i image_prep.i2i"])
    return g, psf


def test_the_seed_command(prepared, capsys) -> None:
    g, psf = prepared
    argv = "-V -D -psf psf_prep.i2i -smoothness 0.0005 -iterations 250 image_prep.i2i image_prep_restored.i2i".split()
    code, err = run(epr_main, argv, capsys)
    assert code == 0, err
    out = eprjax.read("image_prep_restored.i2i")
    want = eprjax.restore(g, psf, alpha=5e-4, max_iterations=250)
    np.testing.assert_allclose(np.asarray(out), want.value, rtol=1e-4, atol=1e-4 * float(want.value.max()))
    assert out.voxel_size_um == pytest.approx(VOXEL)
    assert out.history[0].startswith("* prepdata")
    assert out.history[1] == "* epr " + " ".join(argv)
    assert out.history[2].startswith(f"epr: alpha 0.0005, {int(want.iterations)} iterations, 10x24x24 data in a")
    assert Path("image_prep_restored.i2i").read_bytes()[:1] == b"R"
    log = Path("image_prep_restored.i2i.log").read_text()
    assert f"iteration {int(want.iterations)}: objective" in log and "active" in log
    assert "read image_prep.i2i: ZYX 10x24x24" in log
    assert f"{int(want.iterations)} iterations, relative gradient" in err


def test_flags_and_aliases(prepared, capsys) -> None:
    code, err = run(epr_i2i_main, ["-psf", "psf_prep", "-sm", "1e-3", "-it", "3", "-co", "0.5", "-pad", "0", "0", "image_prep", "r"], capsys)
    assert code == 0, err
    code, err = run(main, ["epr", "-psf", "psf_prep", "-sm", "1e-3", "-it", "3", "-pad", "2", "1", "image_prep", "r2"], capsys)
    assert code == 0, err
    assert "periodic" in eprjax.read("r").history[-1]
    assert "pad z 1+" in eprjax.read("r2").history[-1] and "y 2+" in eprjax.read("r2").history[-1]


def test_several_volumes(prepared, capsys) -> None:
    g, psf = prepared
    eprjax.write("two.i2i", np.stack([g, 3 * g]))
    code, err = run(epr_main, ["-psf", "psf_prep", "-sm", "1e-2", "two", "two_r"], capsys)
    assert code == 0, err
    out = np.asarray(eprjax.read("two_r"))
    assert out.shape == (2, *g.shape)
    np.testing.assert_allclose(out[1], 3 * out[0], rtol=1e-3, atol=1e-3 * out.max())


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["-sm", "-0.1"], "alpha must be >= 0, got -0.1"),
        (["-sm", "0.1", "-it", "0"], "Invalid value for -iterations/-it: must be between 1 and 2147483647"),
        (["-sm", "0.1", "-it", "99999999999999999999"], "must be between 1 and 2147483647, got 99999999999999999999"),
        (["-sm", "1e309"], "alpha must be a finite number >= 0, got 1e309"),
        (["-sm", "0.1", "-devices", "99"], "Invalid value for -devices: this process sees 1 device(s), got 99"),
        (["-sm", "0.1", "-size", "1e-300"], "Invalid value for -size: must be between 1e-06 and 1e+06 um"),
        (["-sm", "0.1", "-co", "1.5"], "Invalid value for -convergence/-co: must be between 0 and 1"),
        (["-sm", "0.1", "-co", "0"], "must be between 0 and 1"),
        (["-sm", "0.1", "-pad", "-1", "2"], "Invalid value for -pad: voxels must be >= 0"),
        (["-sm", "abc"], "Invalid value for -smoothness/-sm: expected a number >= 0, rnl or auto, got 'abc'"),
        (["-sm", "0.1", "-device", "tpu"], "-device: unknown device 'tpu'"),
        (["-sm", "0.1", "-device", "7"], "-device: no device '7'"),
        ([], "Missing option '-smoothness' / '-sm'"),
        (["-sm", "0.1", "-noise", "laplace"], "Invalid value for -noise: must be auto, gaussian or poisson, got 'laplace'"),
    ],
)
def test_bad_values(prepared, capsys, extra, message) -> None:
    code, err = run(epr_main, ["-psf", "psf_prep", *extra, "image_prep", "out"], capsys)
    assert code in (1, 2) and err.count("\n") == 1 and message in err, err
    assert not Path("out.i2i").exists()


@pytest.mark.parametrize("name", ["", ".", "/", "out/", ".."])
def test_names_that_are_no_files(prepared, capsys, name: str) -> None:
    for args in (["image_prep", name], [name, "out"]):
        code, err = run(epr_main, ["-psf", "psf_prep", "-sm", "0.1", *args], capsys)
        assert code == 1 and err.count("\n") == 1 and f"{name!r}: not a file name" in err, err


def test_missing_psf_flag(prepared, capsys) -> None:
    code, err = run(epr_main, ["-sm", "0.1", "image_prep", "out"], capsys)
    assert code == 2 and "Missing option '-psf'" in err


@pytest.mark.parametrize(
    ("psf_change", "message"),
    [
        (lambda h: h - h.max() / 10, "psf_bad has negative values"),
        (lambda h: np.where(h == h.max(), np.nan, h), "psf_bad holds NaN or infinite values"),
        (lambda h: 0 * h, "psf_bad sums to zero"),
    ],
)
def test_bad_psf(prepared, capsys, psf_change, message) -> None:
    _, psf = prepared
    eprjax.write("psf_bad.i2i", psf_change(psf))
    code, err = run(epr_main, ["-psf", "psf_bad", "-sm", "0.1", "image_prep", "out"], capsys)
    assert code == 1 and message in err and err.count("\n") == 1, err


def test_psf_brought_to_the_data_sampling(workdir, capsys) -> None:
    """A PSF taken at 0.1 um steps restores data taken at 0.3 um as the PSF computed at 0.3
    um does (resampled by epr itself, said with -V); one too coarse to resample is refused;
    data without a voxel size take the PSF's, with a warning, or -size/-spaced."""
    optics = dict(na=1.0, n=1.33, wavelength_um=0.55, pixel_size_um=0.15)
    fine = np.asarray(eprjax.widefield_psf((45, 48, 48), z_step_um=0.1, **optics))
    coarse = np.asarray(eprjax.widefield_psf((15, 48, 48), z_step_um=0.3, **optics))
    fine, coarse = fine / fine[22].sum(), coarse / coarse[7].sum()  # -norm infocus: planes keep their values
    rng = np.random.default_rng(0)
    g = np.real(np.fft.ifftn(np.fft.fftn(rng.gamma(0.3, 100.0, (12, 40, 40))) * np.fft.fftn(np.fft.ifftshift(coarse[1:13, 4:44, 4:44]))))
    eprjax.write("g.tif", g.astype(np.float32), voxel_size_um=(0.3, 0.15, 0.15))
    eprjax.write("fine.tif", fine, voxel_size_um=(0.1, 0.15, 0.15))
    eprjax.write("coarse.tif", coarse, voxel_size_um=(0.3, 0.15, 0.15))
    code, err = run(epr_main, ["-V", "-psf", "fine.tif", "-sm", "1e-3", "-pad", "0", "0", "g.tif", "a.tif"], capsys)
    assert code == 0 and "(0.1 x 0.15 x 0.15 um, 45x48x48) brought to the data's sampling (0.3 x 0.15 x 0.15 um)" in err, err
    assert run(epr_main, ["-psf", "coarse.tif", "-sm", "1e-3", "-pad", "0", "0", "g.tif", "b.tif"], capsys)[0] == 0
    a, b = np.asarray(eprjax.read("a.tif").data), np.asarray(eprjax.read("b.tif").data)
    assert np.linalg.norm(a - b) / np.linalg.norm(b) < 0.02
    # a widefield PSF at 0.8 um steps (its axial band reaches 0.82 cycles/um, beyond their 0.625) for data at 0.3
    eprjax.write("under.tif", np.asarray(eprjax.widefield_psf((9, 48, 48), z_step_um=0.8, **optics)), voxel_size_um=(0.8, 0.15, 0.15))
    code, err = run(epr_main, ["-psf", "under.tif", "-sm", "1e-3", "g.tif", "c.tif"], capsys)
    assert code == 1 and "coarser than the 0.3 um needed, and holds light up to its own sampling limit" in err, err
    eprjax.write("g_.i2i", g.astype(np.float32))  # no voxel size
    code, err = run(epr_main, ["-psf", "coarse.tif", "-sm", "1e-3", "-pad", "0", "0", "g_", "d.tif"], capsys)
    assert code == 0 and "g_ states no voxel size along z, y, x; the PSF's (0.3 x 0.15 x 0.15 um) is taken" in err, err
    code, err = run(epr_main, ["-V", "-psf", "fine.tif", "-sm", "1e-3", "-spaced", "0.3", "-size", "0.15", "-pad", "0", "0", "g_", "e.tif"], capsys)
    assert code == 0 and "brought to the data's sampling" in err
    assert eprjax.read("e.tif").voxel_size_um == pytest.approx((0.3, 0.15, 0.15))
    np.testing.assert_allclose(np.asarray(eprjax.read("e.tif").data), a, rtol=1e-5, atol=1e-5 * float(np.abs(a).max()))
    assert run(epr_main, ["-psf", "fine.tif", "-sm", "1e-3", "-size", "-1", "g_", "f.tif"], capsys)[0] == 2


def test_refuses_to_overwrite_inputs(prepared, capsys) -> None:
    code, err = run(epr_main, ["-psf", "psf_prep", "-sm", "0.1", "image_prep", "psf_prep.i2i"], capsys)
    assert code == 1 and "refusing to write over the input psf_prep" in err


@pytest.mark.skipif(any(d.platform == "gpu" for d in jax.devices()), reason="a GPU is present")
def test_gpu_epr_needs_a_gpu(prepared, capsys) -> None:
    code, err = run(gpu_epr_main, ["-psf", "psf_prep", "-sm", "0.1", "image_prep", "out"], capsys)
    assert code == 1
    assert err.startswith("gpu_epr: error: no GPU: JAX sees only cpu")
    assert not Path("out.i2i").exists()


@pytest.mark.parametrize("verbose", [[], ["-V"]], ids=["quiet", "verbose"])
def test_second_run_does_not_compile_again(prepared, verbose) -> None:
    """The compiled restoration is kept on disk: a second process on the same shape finds it."""
    epr = script("epr")
    env = {**os.environ, "EPRJAX_CACHE_DIR": str(Path("cache").resolve())}
    argv = [epr, *verbose, "-psf", "psf_prep", "-sm", "1e-3", "image_prep", "out"]
    first = subprocess.run(argv, capture_output=True, text=True, env=env)
    assert first.returncode == 0, first.stderr
    entries = set(os.listdir("cache"))
    assert any("solve" in e for e in entries)
    second = subprocess.run(argv, capture_output=True, text=True, env=env)
    assert second.returncode == 0, second.stderr
    assert set(os.listdir("cache")) == entries


def test_segments_on_the_command_line(prepared, capsys) -> None:
    g, psf = prepared
    code, err = run(epr_main, ["-V", "-psf", "psf_prep", "-sm", "1e-3", "-co", "1e-4", "-segment", "14", "14", "-overlap", "8", "8", "image_prep", "seg"], capsys)
    assert code == 0, err
    assert "segments: 9 segments (3 x 3) of 10x14x14, overlap 8x8" in err and "predicted peak" in err
    whole = eprjax.restore(g, psf, alpha=1e-3, tol=1e-4).value
    out = np.asarray(eprjax.read("seg"))
    # (a deliberately small overlap here: the plumbing, not the accuracy, which test_segments checks)
    assert np.abs(out - whole).max() < 0.1 * float(g.max() - g.min())
    assert "9 segments of 14x14" in eprjax.read("seg").history[-1]
    code, err = run(epr_main, ["-V", "-psf", "psf_prep", "-sm", "1e-3", "image_prep", "whole"], capsys)
    assert "the whole volume fits in memory" in err
    code, err = run(epr_main, ["-psf", "psf_prep", "-sm", "1e-3", "-devices", "0", "image_prep", "x"], capsys)
    assert code == 2 and "Invalid value for -devices: must be >= 1" in err


def test_noise_weighted_on_the_command_line(workdir: Path, monkeypatch, capsys) -> None:
    """-noise poisson: the data term weighted by 1 / the variance measured on the data, as
    the API does it; the same through segments (the weights cut with them, one scale); the
    history says so; tune takes it too."""
    from eprjax._simulate import camera_stack

    monkeypatch.setenv("EPRJAX_CACHE_DIR", str(workdir / "cache"))
    psf = gaussian_psf((11, 11, 11), (2.0, 1.5, 1.5))
    st = camera_stack((12, 40, 40), psf, peak_photons=500.0, background_photons=3.0, seed=4)
    g = (st.counts - st.offset).astype(np.float32)
    eprjax.write("psf_prep.i2i", psf, voxel_size_um=VOXEL)
    eprjax.write("raw.i2i", g, voxel_size_um=VOXEL)
    code, err = run(epr_main, ["-V", "-psf", "psf_prep", "-sm", "1e-3", "-co", "1e-4", "-noise", "poisson", "raw", "w"], capsys)
    assert code == 0, err
    assert "-noise poisson: the data term weighted by 1 / variance (measured on the data; it spans" in err
    weights = eprjax.noise_weights(eprjax.estimate_noise(g).voxel_variance(g))
    want = eprjax.restore(g, psf, alpha=1e-3, tol=1e-4, weights=weights).value
    plain = eprjax.restore(g, psf, alpha=1e-3, tol=1e-4).value
    out = np.asarray(eprjax.read("w"))
    assert np.abs(out - want).max() < 1e-3 * float(want.max())
    assert np.abs(out - plain).max() > 1e-2 * float(want.max())  # the weights made a difference
    assert "weighted by 1 / the noise variance (measured on the data)" in eprjax.read("w").history[-1]
    code, err = run(epr_main, ["-psf", "psf_prep", "-sm", "1e-3", "-co", "1e-4", "-noise", "poisson", "-segment", "24", "24", "-overlap", "16", "16", "raw", "ws"], capsys)
    assert code == 0, err
    assert np.abs(np.asarray(eprjax.read("ws")) - want).max() < 0.05 * float(want.max())
    assert "weighted by 1 / the noise variance" in eprjax.read("ws").history[-1]
    code, err = run(main, ["tune", "-psf", "psf_prep", "-noise", "poisson", "raw"], capsys)
    assert code == 0, err
    # the default, auto: these photon counts are weighted; Gaussian noise of one level is not
    code, err = run(epr_main, ["-V", "-psf", "psf_prep", "-sm", "1e-3", "-co", "1e-4", "raw", "wa"], capsys)
    assert code == 0 and "-noise auto: the data term weighted by 1 / variance" in err, err
    np.testing.assert_array_equal(np.asarray(eprjax.read("wa")), out)
    flat = (blurred(scene((12, 40, 40)), psf, noise=0.02) * 100 + 50).astype(np.float32)
    eprjax.write("flat.i2i", flat, voxel_size_um=VOXEL)
    code, err = run(epr_main, ["-V", "-psf", "psf_prep", "-sm", "1e-3", "-co", "1e-4", "flat", "fa"], capsys)
    assert code == 0 and "every voxel weighted alike (gaussian)" in err, err
