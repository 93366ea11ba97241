"""The seed's workflow, end to end, on a simulated widefield acquisition: preppsf, prepdata
and epr exactly as the original page writes them (apart from file names)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import eprjax
from eprjax.cli import epr_main, prepdata_main, preppsf_main

OPTICS = dict(na=1.4, n=1.515, wavelength_um=0.52, pixel_size_um=0.187, z_step_um=0.25)


def run(entry, command: str, capsys) -> str:
    with pytest.raises(SystemExit) as info:
        entry(command.split()[1:])
    out, err = capsys.readouterr()
    assert info.value.code == 0, err
    return out + err


def specimen(shape) -> np.ndarray:
    """Beads, a filament and a shell, each a little wider than a voxel: what a cell might hold."""
    z, y, x = np.meshgrid(*(np.arange(n, dtype=float) for n in shape), indexing="ij")
    zs = (z - shape[0] / 2) * 0.25 / 0.187  # z in units of the pixel
    f = np.zeros(shape)
    rng = np.random.default_rng(3)
    for _ in range(12):
        cz, cy, cx = (rng.uniform(4, n - 4) for n in shape)
        f += 1000 * np.exp(-(((z - cz) * 0.25 / 0.187) ** 2 + (y - cy) ** 2 + (x - cx) ** 2) / (2 * 1.2**2))
    f += 400 * np.exp(-((y - 20 - 0.4 * x) ** 2 + zs**2) / (2 * 1.5**2))
    r = np.sqrt(zs**2 + (y - 40) ** 2 + (x - 44) ** 2)
    f += 150 * np.exp(-((r - 9) ** 2) / (2 * 1.5**2))
    return f


def nrmse(f, truth) -> float:
    f, truth = np.asarray(f, np.float64).ravel(), np.asarray(truth, np.float64).ravel()
    a = f @ truth / (f @ f)
    return float(np.linalg.norm(a * f - truth) / np.linalg.norm(truth))


def test_seed_commands_restore_a_simulated_acquisition(workdir: Path, capsys, monkeypatch) -> None:
    monkeypatch.setenv("EPRJAX_CACHE_DIR", str(workdir / "cache"))
    rng = np.random.default_rng(0)
    # the bead, as the microscope records it: int16 counts with background and noise
    bead = np.asarray(eprjax.widefield_psf((32, 64, 64), offset=(0.3, -0.2, 0.35), **OPTICS), np.float64)
    bead_counts = rng.poisson(bead * 4e6 + 150) + rng.normal(0, 2, bead.shape)
    eprjax.write("psf.i2i", np.clip(np.rint(bead_counts), 0, 32767).astype(np.int16))
    # the specimen: blurred (the same optics, limited field), bleached plane by plane, noisy
    truth = specimen((24, 64, 64))
    big = np.pad(truth, ((8, 8), (16, 16), (16, 16)))
    h = np.asarray(eprjax.widefield_psf(big.shape, **OPTICS), np.float64)
    blurred = np.real(np.fft.ifftn(np.fft.fftn(big) * np.fft.fftn(np.fft.ifftshift(h))))[8:-8, 16:-16, 16:-16]
    bleach = np.exp(-0.02 * np.arange(truth.shape[0]))[:, None, None]
    counts = rng.poisson(20 * np.maximum(blurred, 0) * bleach + 120) + rng.normal(0, 2, truth.shape)
    assert counts.max() < 32767
    eprjax.write("image.i2i", np.clip(np.rint(counts), 0, 32767).astype(np.int16))

    run(preppsf_main, "preppsf -NA 1.4 -n 1.515 -size 0.187 -spaced 0.25 -norm infocus -mask 1 psf.i2i psf_prep.i2i", capsys)
    run(prepdata_main, "prepdata -bg_ref 5 5 3 -norm first image.i2i image_prep.i2i", capsys)
    report = run(epr_main, "epr -V -D -psf psf_prep.i2i -smoothness 0.0005 -iterations 250 image_prep.i2i image_prep_restored.i2i", capsys)

    psf = eprjax.read("psf_prep.i2i")
    assert psf.voxel_size_um == pytest.approx((0.25, 0.187, 0.187))
    assert np.asarray(psf)[psf.shape[0] // 2].sum() == pytest.approx(1, rel=1e-5)
    restored = eprjax.read("image_prep_restored.i2i")
    assert restored.shape == truth.shape and restored.dtype.kind == "f"
    assert [line.split()[1] for line in restored.history if line.startswith("* ")] == ["prepdata", "epr"]
    before, after = nrmse(counts - 120, truth), nrmse(restored, truth)  # the data without their background
    print(f"NRMSE to the specimen: data {before:.3f}, restored {after:.3f}")
    assert after < 0.6 * before, (before, after)  # measured: 0.78 and 0.37
    assert "iterations, relative gradient" in report
    assert Path("image_prep_restored.i2i.log").exists()


def test_prepdata_rnl_feeds_epr(workdir: Path, capsys, monkeypatch) -> None:
    monkeypatch.setenv("EPRJAX_CACHE_DIR", str(workdir / "cache"))
    rng = np.random.default_rng(1)
    image = rng.poisson(200 + 100 * rng.random((8, 24, 24))) + 100
    eprjax.write("raw.i2i", image.astype(np.int16))
    out = run(prepdata_main, "prepdata -offset 100 -gain 0.5 -read 1.6 -rnl -bg_ref 3 3 2 raw.i2i prep.i2i", capsys)
    assert "RNL" in out and "alpha = RNL^2" in out
    prepared = eprjax.read("prep.i2i")
    line = prepared.history[-1]
    assert line.startswith("prepdata: RNL ")
    rnl = float(line.split()[2].rstrip(","))
    eprjax.write("psf.i2i", np.asarray(eprjax.widefield_psf((9, 15, 15), **OPTICS)))
    out = run(epr_main, "epr -V -psf psf.i2i -sm rnl -it 5 prep.i2i restored.i2i", capsys)
    assert f"alpha = RNL^2 = {rnl**2:.4g}" in out
    assert eprjax.read("restored.i2i").history[-1].startswith(f"epr: alpha {rnl**2:g}")


def test_prepdata_and_preppsf_errors(workdir: Path, capsys) -> None:
    eprjax.write("raw.i2i", np.ones((4, 8, 8), np.int16))
    for argv, message in [
        (["-rnl", "raw", "out"], "give the camera's -gain and -read"),
        (["-norm", "last", "raw", "out"], "must be first or none"),
        (["-bg_ref", "5", "5", "raw", "out"], "-bg_ref"),
        (["-gain", "0", "-read", "1", "raw", "out"], "gain must be > 0"),
    ]:
        with pytest.raises(SystemExit) as info:
            prepdata_main(argv)
        err = capsys.readouterr().err
        assert info.value.code in (1, 2) and message in err and err.count("\n") == 1, err
    with pytest.raises(SystemExit) as info:
        preppsf_main(["-NA", "1.4", "-n", "1.515", "raw", "out"])
    err = capsys.readouterr().err
    assert info.value.code == 1 and "the file does not say its XY pixel size; give it with -size" in err
    with pytest.raises(SystemExit) as info:
        epr_main(["-psf", "raw", "-sm", "rnl", "raw", "out"])
    assert "the file's history holds no RNL" in capsys.readouterr().err


def test_preppsf_reports_what_it_found(workdir: Path, capsys) -> None:
    bead = np.asarray(eprjax.widefield_psf((24, 48, 48), offset=(0.25, 0.0, -0.3), **OPTICS), np.float64)
    eprjax.write("bead.tif", (bead * 1e6 + 50).astype(np.float32), voxel_size_um=(0.25, 0.187, 0.187))
    out = run(preppsf_main, "preppsf -V -NA 1.4 -n 1.515 -norm total -mask 1 -subxy 31 -subz 15 bead.tif p.i2i", capsys)
    # (the border's median is above the true 50 here: a widefield bead lights the whole field)
    for text in ("background 5", "bead centre x 23.7", "y 24.0", "z 12.2", "shifted by", "before normalisation", "of the energy, removed"):
        assert text in out, text
    psf = eprjax.read("p")
    assert psf.shape == (15, 31, 31) and np.asarray(psf).sum() == pytest.approx(1, rel=1e-5)
    assert psf.voxel_size_um == pytest.approx((0.25, 0.187, 0.187))  # from the file, no -size needed
    run(preppsf_main, "preppsf -NA 1.4 -n 1.515 -center 24 24 12 -subxy 21 -subz 9 -norm none bead.tif c.i2i", capsys)
    assert eprjax.read("c").shape == (9, 21, 21)


def test_prepdata_dark_and_flat_files(workdir: Path, capsys) -> None:
    rng = np.random.default_rng(2)
    flat = 1 + 0.2 * rng.random((16, 20))
    dark = 90 + rng.random((16, 20))
    signal = 50 + 30 * rng.random((6, 16, 20))
    eprjax.write("flat.i2i", flat.astype(np.float32))
    eprjax.write("dark.i2i", dark.astype(np.float32))
    eprjax.write("raw.i2i", (signal * flat + dark).astype(np.float32))
    run(prepdata_main, "prepdata -dark dark.i2i -flat flat.i2i raw.i2i out.i2i", capsys)
    np.testing.assert_allclose(np.asarray(eprjax.read("out")), signal * flat.mean(), rtol=1e-5)
    with pytest.raises(SystemExit):
        prepdata_main(["-flat", "flat.i2i", "raw.i2i", "flat.i2i"])
    assert "refusing to write over the input flat.i2i" in capsys.readouterr().err


def test_prepdata_warns_of_a_camera_offset_and_takes_voxel_sizes(workdir: Path, capsys) -> None:
    """-gain without -offset on data whose dark level carries an offset (100 counts over 120
    photons) is warned of, with the offset estimated; with -offset, or without an offset, not.
    -size/-spaced give the output its voxel size."""
    data = eprjax._simulate.simulate((24, 64, 64))  # counts = photoelectrons, background 120
    eprjax.write("raw.tif", data.image.astype(np.float32) + 100)
    eprjax.write("clean.tif", data.image.astype(np.float32))
    out = run(prepdata_main, "prepdata -gain 1 -read 2 -size 0.187 -spaced 0.25 raw.tif a.tif", capsys)
    assert "looks like a camera offset of about" in out and "give -offset" in out, out
    estimate = float(out.split("camera offset of about ")[1].split()[0])
    assert 60 < estimate < 120
    assert eprjax.read("a.tif").voxel_size_um == pytest.approx((0.25, 0.187, 0.187))
    assert "camera offset" not in run(prepdata_main, "prepdata -gain 1 -read 2 -offset 100 raw.tif b.tif", capsys)
    assert "camera offset" not in run(prepdata_main, "prepdata -gain 1 -read 2 clean.tif c.tif", capsys)
