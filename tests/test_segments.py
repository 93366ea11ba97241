"""Overlapping XY segments: the plan, agreement with the whole restoration, no seam, one
compilation for all segments."""

from __future__ import annotations

import numpy as np
import pytest

import eprjax
from eprjax._restore import _solve_segments
from eprjax._segments import weights

from .test_restore import blurred, gaussian_psf, scene


@pytest.fixture(scope="module")
def volume():
    psf = gaussian_psf((9, 9, 9), (2.0, 1.5, 1.5))
    g = blurred(scene((16, 96, 96)), psf)
    whole = eprjax.restore(g, psf, alpha=1e-3, tol=1e-5, max_iterations=2000).value
    return g, psf, whole


def test_plan_covers_the_volume() -> None:
    psf = gaussian_psf((9, 9, 9), (2.0, 1.5, 1.5))
    plan = eprjax.plan_segments((16, 100, 70), psf, segment=(48, 40))
    assert plan.segment == (48, 40) and plan.overlap == (26, 26) and plan.margin == (4, 4)
    covered = np.zeros((100, 70), int)
    for y, x in plan.starts:
        covered[y : y + 48, x : x + 40] += 1
    assert covered.min() >= 1
    w = weights(plan)
    total = np.zeros((100, 70))
    for (y, x), wi in zip(plan.starts, w, strict=True):
        total[y : y + 48, x : x + 40] += wi
    assert total.min() > 0.5  # every voxel has a segment that trusts it
    assert "segments" in plan.describe() and "MiB" in plan.describe()


def test_plan_follows_the_memory_budget() -> None:
    psf = gaussian_psf((9, 9, 9), (2.0, 1.5, 1.5))
    big = eprjax.plan_segments((32, 512, 512), psf, memory_bytes=2**40)
    assert big.count == 1 and big.segment == (512, 512)
    small = eprjax.plan_segments((32, 512, 512), psf, memory_bytes=64 * 2**20)
    assert small.count > 1 and small.peak_bytes <= 64 * 2**20
    with pytest.raises(eprjax.ParameterError, match="over the budget"):
        eprjax.plan_segments((32, 512, 512), psf, segment=(256, 256), memory_bytes=2**20)
    with pytest.raises(eprjax.ParameterError, match="cannot overlap"):
        eprjax.plan_segments((32, 512, 512), psf, segment=(20, 20), overlap=(26, 26))


def test_impossible_budgets_and_overlaps_are_refused_at_once(caplog) -> None:
    """A budget too small for any useful segment, or a padding too large, is refused at
    once (it once looped for ever); an overlap that leaves the segments advancing by less
    than a quarter of their size is refused when given and reduced to half the segment,
    with a warning, when it is the default (an 86-voxel default overlap on 96-voxel segments
    made 100 segments of a 16x192x192 volume, 92 made 625)."""
    import time

    psf = gaussian_psf((15, 31, 31), (2.0, 4.0, 4.0))  # half-width 14: default overlap 86
    started = time.perf_counter()
    with pytest.raises(eprjax.ParameterError, match="over the budget of"):
        eprjax.plan_segments((16, 192, 192), psf, memory_bytes=1000)
    with pytest.raises(eprjax.ParameterError, match="smaller -pad"):
        eprjax.plan_segments((16, 192, 192), psf, pad=(99999, 99999, 99999), memory_bytes=2**30)
    assert time.perf_counter() - started < 5
    with pytest.raises(eprjax.ParameterError, match="advance by 4 voxels"):
        eprjax.plan_segments((16, 192, 192), psf, segment=(96, 96), overlap=(92, 92))
    with caplog.at_level("WARNING", logger="eprjax"):
        plan = eprjax.plan_segments((16, 192, 192), psf, segment=(96, 96))
    assert plan.overlap == (48, 48) and plan.count == 9 and "reduced from 86" in caplog.text
    assert eprjax.plan_segments((16, 192, 192), psf, segment=(96, 96), overlap=(72, 72)).count == 25  # a quarter: allowed


def test_segmented_agrees_with_whole(volume) -> None:
    g, psf, whole = volume
    seg = eprjax.restore(g, psf, alpha=1e-3, tol=1e-5, max_iterations=2000, segment=(48, 48))
    assert seg.value.shape == g.shape and seg.value.dtype == np.float32
    difference = np.abs(np.asarray(seg.value) - whole)
    data_range = float(g.max() - g.min())
    assert difference.max() < 0.01 * data_range  # measured: 0.45 %


def test_no_seam(volume) -> None:
    """Across each overlap, the difference to the whole restoration changes smoothly: its
    voxel-to-voxel steps are no larger there than elsewhere."""
    g, psf, whole = volume
    plan = eprjax.plan_segments(g.shape, psf, segment=(48, 48))
    seg = eprjax.restore(g, psf, alpha=1e-3, tol=1e-5, max_iterations=2000, segment=(48, 48))
    diff = np.asarray(seg.value, np.float64) - whole
    steps = np.abs(np.diff(diff, axis=2))
    edges = sorted({x for _, x in plan.starts if x > 0} | {x + 48 for _, x in plan.starts if x + 48 < 96})
    near = np.zeros(steps.shape[2], bool)
    for e in edges:
        near[max(0, e - 14) : e + 14] = True
    assert steps[:, :, near].max() < 0.005 * float(g.max() - g.min())


def test_one_compilation_for_all_segments(volume) -> None:
    g, psf, _ = volume
    eprjax.restore(g, psf, alpha=1e-3, segment=(48, 48))
    before = _solve_segments._cache_size()
    eprjax.restore(g * 2, psf, alpha=5e-3, segment=(48, 48), max_iterations=50)
    assert _solve_segments._cache_size() == before


def test_auto_segments_and_limits(volume) -> None:
    g, psf, whole = volume
    auto = eprjax.restore(g, psf, alpha=1e-3, tol=1e-5, max_iterations=2000, segment="auto")
    np.testing.assert_allclose(np.asarray(auto.value), whole, atol=0.01 * float(g.max() - g.min()))
    with pytest.raises(eprjax.ParameterError, match="one .Z, Y, X. volume"):
        eprjax.restore(np.stack([g, g]), psf, alpha=1e-3, segment=(48, 48))


def test_four_devices_agree_with_one(tmp_path) -> None:
    """Segments spread over 4 fake CPU devices (shard_map) give what one device gives, to
    float32 rounding, on the data's grid and onto a finer one. A subprocess, since the device count is fixed when JAX starts."""
    import os
    import subprocess
    import sys
    import textwrap
    from pathlib import Path

    script = textwrap.dedent(
        """
        import sys
        import numpy as np, jax, eprjax
        from tests.test_restore import gaussian_psf, scene, blurred
        assert len(jax.local_devices()) == 4, jax.local_devices()
        psf = gaussian_psf((9, 9, 9), (2.0, 1.5, 1.5))
        g = blurred(scene((12, 64, 64)), psf)
        one = eprjax.restore(g, psf, alpha=1e-3, tol=1e-4, segment=(32, 32), devices=1).value
        four = eprjax.restore(g, psf, alpha=1e-3, tol=1e-4, segment=(32, 32), devices=4).value
        three = eprjax.restore(g, psf, alpha=1e-3, tol=1e-4, segment=(32, 32), devices=3).value
        fine = [eprjax.restore(g[:8, :32, :32], psf, alpha=1e-3, tol=1e-4, factor=2, segment=(24, 24), devices=n).value for n in (1, 3)]
        assert fine[0].shape == (8, 64, 64)
        print(float(np.abs(one - four).max() / np.abs(one).max()), float(np.abs(one - three).max() / np.abs(one).max()),
              float(np.abs(fine[0] - fine[1]).max() / np.abs(fine[0]).max()))
        """
    )
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=4", "PYTHONPATH": str(root), "JAX_PLATFORMS": "cpu"}
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, cwd=root, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    four, three, fine = (float(v) for v in done.stdout.split())
    assert four < 1e-5 and three < 1e-5 and fine < 1e-5  # measured: 7e-7 (fine: onto a 2x finer grid)
