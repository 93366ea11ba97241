"""Many files in one run: ``epr IN... -outdir DIR`` and ``prepdata IN... -outdir DIR``."""

from __future__ import annotations

from pathlib import Path

import jax
import numpy as np
import pytest

import eprjax
from eprjax.cli import main

from .test_restore import blurred, gaussian_psf, scene


def run(argv, capsys) -> tuple[int, str]:
    with pytest.raises(SystemExit) as info:
        main(argv)
    return info.value.code, capsys.readouterr().err


@pytest.fixture
def files(workdir: Path, monkeypatch) -> list[np.ndarray]:
    monkeypatch.setenv("EPRJAX_CACHE_DIR", str(workdir / "cache"))
    psf = gaussian_psf((9, 9, 9), (2.0, 1.5, 1.5))
    eprjax.write("psf.i2i", psf)
    stacks = [(blurred(scene((10, 28, 28), seed=k), psf, seed=k) * 100).astype(np.float32) for k in range(4)]
    for k, g in enumerate(stacks):
        eprjax.write(f"cell{k}.tif", g, voxel_size_um=(0.3, 0.1, 0.1))
    return stacks


def _compilations(run_it) -> int:
    """How many functions JAX traces for compilation while ``run_it()`` runs, its caches
    cleared first (a persistent-cache hit still traces: this counts what a file costs)."""
    events: list[str] = []

    def heard(name: str, *_args, **_kwargs) -> None:
        if name.startswith("/jax/core/compile/jaxpr_trace"):
            events.append(name)

    jax.clear_caches()
    jax.monitoring.register_event_duration_secs_listener(heard)
    try:
        run_it()
    finally:
        jax.monitoring.unregister_event_duration_listener(heard)
    return len(events)


def test_epr_restores_every_file_with_one_compilation(files, capsys) -> None:
    """Four files of one shape, given as a pattern: each restored as `epr IN OUT` would
    (same values, voxel size, history), a line for each, and no more compilations than one
    file alone costs."""
    common = ["epr", "-psf", "psf", "-sm", "1e-3", "-it", "40", "-noise", "gaussian"]
    one = _compilations(lambda: run([*common, "cell0.tif", "-outdir", "single"], capsys))
    many = _compilations(lambda: run([*common, "cell*.tif", "-outdir", "out"], capsys))
    assert one > 0 and many == one, (one, many)
    code, err = run([*common, "cell*.tif", "-outdir", "out"], capsys)
    assert code == 0, err
    assert [f"[{k + 1}/4] cell{k}.tif -> out/cell{k}.tif" in err for k in range(4)] == [True] * 4
    assert "4 of 4 files done" in err
    for k in range(4):
        code, err = run([*common, f"cell{k}.tif", f"alone{k}.tif"], capsys)
        assert code == 0, err
        batch, alone = eprjax.read(f"out/cell{k}.tif"), eprjax.read(f"alone{k}.tif")
        np.testing.assert_array_equal(np.asarray(batch), np.asarray(alone))
        assert batch.voxel_size_um == pytest.approx((0.3, 0.1, 0.1))
        assert batch.history[-1] == alone.history[-1]
    assert eprjax.read("cell0.tif").shape == (10, 28, 28)  # inputs untouched


def test_a_file_that_fails_does_not_stop_the_others(files, capsys) -> None:
    Path("broken.tif").write_bytes(b"not a tiff")
    eprjax.write("other.tif", files[0][:, :20])  # another shape: compiled for itself
    code, err = run(["epr", "-psf", "psf", "-sm", "1e-3", "-it", "5", "cell0.tif", "broken.tif", "other.tif", "-outdir", "out"], capsys)
    assert code == 1
    assert "[2/3] broken.tif" in err and "error" in err and "1 of 3 files failed: broken.tif" in err
    assert Path("out/cell0.tif").exists() and Path("out/other.tif").exists() and not Path("out/broken.tif").exists()
    assert eprjax.read("out/other.tif").shape == (10, 20, 28)


@pytest.mark.parametrize(
    ("argv", "says"),
    [
        (["cell0.tif"], "expected IN OUT, got 1 name(s)"),
        (["cell0.tif", "cell1.tif", "x.tif"], "expected IN OUT, got 3 name(s)"),
        (["nothing*.tif", "-outdir", "out"], "nothing*.tif: no file matches"),
        (["cell0.tif", "-outdir", "."], "refusing to write over the input cell0.tif"),
        (["cell0.tif", "sub/cell0.tif", "-outdir", "out"], "would both be written to out/cell0.tif"),
        (["cell0.tif", "-outdir", "psf.i2i"], "not a folder"),
    ],
)
def test_impossible_file_lists_are_one_line(files, capsys, argv, says) -> None:
    Path("sub").mkdir()
    eprjax.write("sub/cell0.tif", files[1])
    before = {p: p.read_bytes() for p in Path(".").glob("*.tif")}
    code, err = run(["epr", "-psf", "psf", "-sm", "1e-3", *argv], capsys)
    assert code != 0 and says in err, err
    assert len(err.strip().splitlines()) == 1, err
    assert {p: p.read_bytes() for p in Path(".").glob("*.tif")} == before
    assert not Path("out").exists()


def test_prepdata_corrects_every_file(files, capsys) -> None:
    code, err = run(["prepdata", "-offset", "1", "-bg_ref", "4", "4", "2", "cell1.tif", "cell2.tif", "-outdir", "prep"], capsys)
    assert code == 0, err
    for k in (1, 2):
        code, _ = run(["prepdata", "-offset", "1", "-bg_ref", "4", "4", "2", f"cell{k}.tif", f"p{k}.tif"], capsys)
        assert code == 0
        np.testing.assert_array_equal(np.asarray(eprjax.read(f"prep/cell{k}.tif")), np.asarray(eprjax.read(f"p{k}.tif")))
    assert "[2/2] cell2.tif -> prep/cell2.tif" in err
