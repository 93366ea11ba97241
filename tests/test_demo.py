"""eprjax demo: the seed's workflow on a built-in simulated acquisition."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

import eprjax
from eprjax.cli import main


def test_demo(workdir: Path, capsys, monkeypatch) -> None:
    monkeypatch.setenv("EPRJAX_CACHE_DIR", str(workdir / "cache"))
    with pytest.raises(SystemExit) as info:
        main(["demo", "--outdir", "out"])
    out, err = capsys.readouterr()
    assert info.value.code == 0, err
    for step in ("$ preppsf -NA 1.4", "$ prepdata -bg_ref 5 5 3 -norm first", "$ epr -V -psf psf_prep.i2i -smoothness 0.0005"):
        assert step in out
    before, after = (float(v) for v in re.search(r"data ([0-9.]+), restored ([0-9.]+)", out).groups())
    assert after < 0.6 * before
    restored = eprjax.read("out/image_prep_restored.i2i")
    assert restored.voxel_size_um == pytest.approx((0.25, 0.187, 0.187))
    assert [line.split()[1] for line in restored.history if line.startswith("* ")] == ["prepdata", "epr"]
    png = Path("out/demo.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 20_000  # slices and a curve, not an empty canvas
    assert "figure: demo.png" in out


def test_demo_rejects_an_unknown_size(workdir: Path, capsys) -> None:
    with pytest.raises(SystemExit) as info:
        main(["demo", "-size", "huge"])
    assert info.value.code == 2 and "must be one of small, medium, large" in capsys.readouterr().err
