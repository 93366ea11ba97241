"""prepdata: synthetic stacks with known offset, background, flat field and bleaching."""

from __future__ import annotations

import numpy as np
import pytest

import eprjax
from eprjax._prepdata import darkest_box_mean

SHAPE = (12, 40, 48)
OFFSET, BACKGROUND, GAIN, READ = 100.0, 20.0, 0.5, 1.6  # counts, counts, e-/count, e-


def specimen(seed=0) -> np.ndarray:
    """A stack in which every plane carries the same total light (as widefield data do)."""
    rng = np.random.default_rng(seed)
    plane = np.zeros(SHAPE[1:])
    plane[8:30, 10:40] = 200.0
    plane += 100 * rng.random(SHAPE[1:]) * (plane > 0)
    stack = np.stack([np.roll(plane, (z, -z), axis=(0, 1)) for z in range(SHAPE[0])])
    return stack


def flat_field() -> np.ndarray:
    yy, xx = np.meshgrid(np.linspace(-1, 1, SHAPE[1]), np.linspace(-1, 1, SHAPE[2]), indexing="ij")
    return 1.2 - 0.3 * (xx**2 + yy**2)  # vignetting


def bleaching() -> np.ndarray:
    return np.exp(-0.04 * np.arange(SHAPE[0]))


def acquire(clean_counts: np.ndarray, rng) -> np.ndarray:
    electrons = rng.poisson(clean_counts * GAIN)
    return electrons / GAIN + OFFSET + rng.normal(0, READ / GAIN, clean_counts.shape)


def expectation() -> tuple[np.ndarray, np.ndarray]:
    """(the specimen, the expected raw counts: bleached, with background and vignetting)."""
    truth = specimen()
    counts = (truth * bleaching()[:, None, None] + BACKGROUND) * flat_field()
    return truth, counts


def test_recovers_offset_flat_background_and_bleaching() -> None:
    truth, counts = expectation()
    raw = counts + OFFSET  # noiseless: every correction must be exact
    out = eprjax.prepare_data(raw, offset=OFFSET, flat=flat_field(), bg_ref=(5, 5, 3), norm="first")
    value = np.asarray(out.value)
    assert float(out.background) == pytest.approx(BACKGROUND * flat_field().mean(), rel=1e-4)  # after the flat
    np.testing.assert_allclose(np.asarray(out.scale), 1 / bleaching(), rtol=1e-4)
    # the flat field is normalised to mean 1, so the result is the truth times mean(flat)
    np.testing.assert_allclose(value, truth * flat_field().mean(), rtol=1e-4, atol=1e-3)
    assert value.dtype == np.float32


def test_dark_image_and_volumes() -> None:
    truth, counts = expectation()
    dark = OFFSET + np.arange(SHAPE[2])[None, :] * np.ones(SHAPE[1:])  # a ramp in the dark frame
    series = np.stack([counts * 1.0, counts * 0.5]) + dark  # two volumes, the second dimmer
    out = eprjax.prepare_data(series, dark=dark, norm="first")
    np.testing.assert_allclose(np.asarray(out.scale), [1.0, 2.0], rtol=1e-5)
    np.testing.assert_allclose(np.asarray(out.value)[1], np.asarray(out.value)[0], rtol=1e-4, atol=1e-3)
    two_d = eprjax.prepare_data(counts[0] + OFFSET, offset=OFFSET, bg_ref=(5, 5, 1))
    assert two_d.value.shape == SHAPE[1:]


def test_darkest_box() -> None:
    x = np.full((6, 20, 20), 50.0, np.float32)
    x[1:4, 2:7, 11:16] = 3.0  # a dark 5 x 5 x 3 box
    assert float(darkest_box_mean(x, (3, 5, 5))) == pytest.approx(3.0)
    assert float(darkest_box_mean(x, (3, 6, 5))) == pytest.approx((3 * 5 * 5 * 3.0 + 3 * 1 * 5 * 50.0) / 90)


def test_rnl_matches_repeated_acquisitions() -> None:
    """The reported RNL against the noise measured over many simulated acquisitions."""
    _, counts = expectation()
    rng = np.random.default_rng(1)
    runs = [
        np.asarray(eprjax.prepare_data(acquire(counts, rng), offset=OFFSET, flat=flat_field(), bg_ref=(5, 5, 3), norm="first").value)
        for _ in range(40)
    ]
    runs = np.stack(runs)
    measured = np.sqrt(np.mean(runs.var(axis=0, ddof=1))) / np.sqrt(np.mean(runs.mean(axis=0) ** 2))
    one = eprjax.prepare_data(
        acquire(counts, rng), offset=OFFSET, flat=flat_field(), bg_ref=(5, 5, 3), norm="first", gain=GAIN, read_noise=READ
    )
    assert abs(float(one.rnl) - measured) < 0.1 * measured, (float(one.rnl), measured)
    assert float(one.alpha) == pytest.approx(float(one.rnl) ** 2)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"gain": 0.0}, "gain must be > 0"),
        ({"gain": -1.0}, "gain must be > 0"),
        ({"read_noise": -1.0}, "read noise must be >= 0"),
        ({"flat": np.zeros(SHAPE[1:])}, "flat field has zeros"),
        ({"flat": np.ones((3, 3))}, "the flat field has shape"),
        ({"bg_ref": (50, 5, 3)}, "does not fit"),
        ({"norm": "last"}, "norm must be one of"),
        ({"offset": 1.0, "dark": np.zeros(SHAPE[1:])}, "not both"),
    ],
)
def test_errors(kwargs, message) -> None:
    _, counts = expectation()
    with pytest.raises(eprjax.ParameterError, match=message):
        eprjax.prepare_data(counts, **kwargs)
