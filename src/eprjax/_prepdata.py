"""prepdata: the acquisition corrections, in the order basic -> background -> temporal.

- basic: subtract the camera offset (a number) or a dark image, divide by the flat field
  (normalised to mean 1);
- background: subtract the mean of the darkest NX x NY x NZ box (``bg_ref``), found with a
  box filter and a minimum;
- temporal (``norm="first"``): scale each plane (a 3-D stack: acquisition order is Z) or each
  volume (a time series, 4-D) so that its total equals the first one's; in a widefield stack
  every plane carries the same total light, so this undoes bleaching during the scan.

It also computes the residual noise limit, RNL = noise RMS / signal RMS, the noise from the
camera model (Poisson in the electrons counted, plus read noise) when the camera's gain
(electrons per count) and read noise (electrons) are given, else from the Poisson-Gaussian
model measured on the raw data (`estimate_noise`), carried through the same corrections;
RNL^2 is the suggested smoothness alpha for epr.
"""

from __future__ import annotations

import functools
import math
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float

from ._arrays import to_jax
from ._errors import ParameterError
from ._noise import NoiseModel, estimate_noise

NORMS = ("none", "first")

RNL_LINE = "prepdata: RNL {rnl:.6g}, alpha = RNL^2 = {alpha:.6g}{source}"  # the history line epr -sm rnl reads
MEASURED = "noise measured on the data"  # how that line says the RNL did not come from the camera


class PreparedData(eqx.Module):
    """What `prepare_data` returns.

    Attributes:
        value: the corrected image, float32, the input's axes.
        background: the background subtracted (per volume for 4-D data), counts per voxel.
        scale: the temporal factors applied (per plane for a stack, per volume for 4-D).
        rnl: the residual noise limit: from the camera model when the gain and read noise
            are given, else from the noise model measured on the data (`noise`); NaN when
            neither is there (a 2-D image, or too few voxels to measure the noise on).
        alpha: the suggested smoothness, RNL^2.
        noise: the noise model measured on the raw data (its first volume), in counts
            (`estimate_noise`), or None where it could not be measured.
    """

    value: Float[Array, "..."]
    background: Float[Array, "*t"]
    scale: Float[Array, " n"]
    rnl: Float[Array, ""]
    alpha: Float[Array, ""]
    noise: NoiseModel | None = eqx.field(static=True, default=None)


def _box_means(x: Float[Array, "z y x"], box: tuple[int, int, int]) -> Float[Array, "a b c"]:
    """The mean of every box of ``box`` (z, y, x) voxels that fits in ``x``: a moving sum
    along one axis at a time (running sums over one axis stay small, so float32 keeps its
    precision where a 3-D summed-area table would not)."""
    for axis, b in enumerate(box):
        c = jnp.cumsum(x, axis=axis)
        c = jnp.concatenate([jnp.zeros_like(jnp.take(c, jnp.arange(1), axis=axis)), c], axis=axis)
        n = c.shape[axis]
        x = jnp.take(c, jnp.arange(b, n), axis=axis) - jnp.take(c, jnp.arange(0, n - b), axis=axis)
    return x / (box[0] * box[1] * box[2])


def darkest_box_mean(x: Float[Array, "z y x"], box: tuple[int, int, int]) -> Float[Array, ""]:
    """The mean of the darkest box of ``box`` (z, y, x) voxels in ``x``."""
    return jnp.min(_box_means(x if x.dtype == jnp.float64 else x.astype(jnp.float32), box))


OFFSET_BOX = (8, 32, 32)  # z, y, x: the dark region where the camera model is checked


def implied_offset(x: Any, *, gain: float, read_noise: float) -> tuple[float, float, float, float]:
    """How much of the data's dark level the camera model cannot explain as light: in the
    darkest box (`OFFSET_BOX`, or the image's size), the level L (counts) and the noise
    sigma (counts, from neighbour differences along X, robustly); light of L counts would
    have variance (L gain + read^2) / gain^2, so the level the noise accounts for is
    P = (sigma^2 gain^2 - read^2) / gain, and the rest, L - P, is an offset the camera adds.

    Returns (L, sigma, the sigma light of L counts would have, L - P).
    """
    v = np.asarray(x, np.float32)
    v = v.reshape((-1, *v.shape[-3:])) if v.ndim >= 3 else v.reshape((1, 1, *v.shape[-2:]))
    vol = v[0]
    box = tuple(min(b, n) for b, n in zip(OFFSET_BOX, vol.shape, strict=True))
    means = np.asarray(_box_means(jnp.asarray(vol), box))
    corner = np.unravel_index(int(np.argmin(means)), means.shape)
    dark = vol[tuple(slice(c, c + b) for c, b in zip(corner, box, strict=True))].astype(np.float64)
    level = float(dark.mean())
    d = np.diff(dark, axis=-1).ravel()
    sigma = float(1.4826 * np.median(np.abs(d - np.median(d))) / math.sqrt(2)) if d.size else 0.0
    expected = math.sqrt(max(level * gain + read_noise**2, 0.0)) / gain
    explained = (sigma**2 * gain**2 - read_noise**2) / gain
    return level, sigma, expected, level - max(explained, 0.0)


def _frame(extra, image_shape, volumes_shape, name):
    """A dark or flat frame, one plane (Y, X) for every plane or of the image's own shape,
    shaped to broadcast against the (volumes, Z, Y, X) view of the image."""
    extra = to_jax(extra, name).astype(jnp.float32)
    if extra.shape == tuple(image_shape[-2:]):
        return extra
    if extra.shape == tuple(image_shape):
        return extra.reshape(volumes_shape)
    raise ParameterError(f"{name} has shape {tuple(extra.shape)}; expected {tuple(image_shape[-2:])} or {tuple(image_shape)}")


def prepare_data(
    image: Any,
    *,
    offset: float | None = None,
    dark: Any = None,
    gain: float | None = None,
    read_noise: float | None = None,
    flat: Any = None,
    bg_ref: tuple[int, int, int] | None = None,
    norm: str = "first",
) -> PreparedData:
    """Correct a raw 2-D, 3-D or 4-D (T, Z, Y, X) acquisition; see the module's docstring.

    Args:
        image: the raw image, counts (any real dtype).
        offset: the camera offset (counts) to subtract; or
        dark: a dark image (Y, X) or of the image's shape, to subtract.
        gain: electrons per count, > 0 (for the RNL; without it and ``read_noise`` the
            RNL comes from the noise measured on the data).
        read_noise: the read noise, electrons RMS, >= 0 (for the RNL).
        flat: the flat field (Y, X) or of the image's shape, no zeros; normalised to mean 1
            and divided out.
        bg_ref: (nx, ny, nz), the box whose darkest placement's mean is the background
            (``-bg_ref NX NY NZ``); None: no background subtraction.
        norm: ``"first"`` (default): planes (3-D) or volumes (4-D) scaled to the first one's
            total; ``"none"`` (the command line's default, as the original's).

    Example:
        >>> out = eprjax.prepare_data(raw, offset=100, bg_ref=(5, 5, 3), norm="first", gain=0.5, read_noise=1.6)
        >>> out.value, float(out.rnl), float(out.alpha)
    """
    if norm not in NORMS:
        raise ParameterError(f"norm must be one of {', '.join(NORMS)}, got {norm!r}")
    if offset is not None and dark is not None:
        raise ParameterError("give a camera offset or a dark image, not both")
    if gain is not None and not (math.isfinite(gain) and gain > 0):
        raise ParameterError(f"the gain must be > 0 electrons per count, got {gain!r}")
    if read_noise is not None and not (math.isfinite(read_noise) and read_noise >= 0):
        raise ParameterError(f"the read noise must be >= 0 electrons, got {read_noise!r}")
    x = to_jax(image, "image")
    if jnp.issubdtype(x.dtype, jnp.complexfloating):
        raise ParameterError("complex images cannot be prepared")
    x = x.astype(jnp.float32)
    if x.ndim not in (2, 3, 4):
        raise ParameterError(f"the image must be 2-D, 3-D or 4-D (T, Z, Y, X), got shape {tuple(x.shape)}")
    if not bool(jnp.all(jnp.isfinite(x))):
        raise ParameterError("the image holds NaN or infinite values")
    volumes_shape = (x.shape[0], *x.shape[1:]) if x.ndim == 4 else (1, *((1,) * (3 - x.ndim)), *x.shape)
    dark_frame = None if dark is None else _frame(dark, x.shape, volumes_shape, "the dark image")
    flat_frame = None
    if flat is not None:
        flat_frame = _frame(flat, x.shape, volumes_shape, "the flat field")
        if bool(jnp.any(flat_frame <= 0)) or not bool(jnp.all(jnp.isfinite(flat_frame))):
            raise ParameterError("the flat field has zeros, negative or non-finite values")
    box = None
    if bg_ref is not None:
        nx, ny, nz = (int(v) for v in bg_ref)
        box = (min(nz, volumes_shape[1]), ny, nx)
        if min(box) < 1 or box[1] > volumes_shape[2] or box[2] > volumes_shape[3]:
            raise ParameterError(
                f"bg_ref {nx} {ny} {nz} does not fit a {volumes_shape[3]} x {volumes_shape[2]} x {volumes_shape[1]} image"
            )
    temporal = None if norm == "none" or x.ndim == 2 else ("volumes" if x.ndim == 4 else "planes")
    camera = None if gain is None or read_noise is None else (jnp.float32(gain), jnp.float32(read_noise))
    volumes = x.reshape(volumes_shape)
    noise = None
    try:
        noise = estimate_noise(np.asarray(volumes[0]))
    except ParameterError:
        pass  # too small, or no noise to measure: the RNL needs the camera's numbers then
    measured = None
    if camera is None and noise is not None:
        measured = (jnp.float32(noise.slope), jnp.float32(noise.intercept), jnp.float32(noise.lowest), jnp.float32(noise.floor))
    value, background, scale, rnl = _correct(
        volumes, None if offset is None else jnp.float32(offset), dark_frame, flat_frame, camera, measured,
        box=box, temporal=temporal,
    )
    if temporal is not None and not bool(jnp.all(jnp.isfinite(scale) & (scale > 0))):
        raise ParameterError("norm first: a plane or volume has no light above the background to scale by")
    return PreparedData(
        value=value.reshape(x.shape),
        background=background if x.ndim == 4 else background[0],
        scale=scale,
        rnl=rnl,
        alpha=rnl**2,
        noise=noise,
    )


@functools.partial(jax.jit, static_argnames=("box", "temporal"))
def _correct(volumes, offset, dark, flat, camera, measured, *, box, temporal):
    """The corrections on (volumes, Z, Y, X): basic, background, temporal; and the RNL, from
    the ``camera`` (gain, read noise) or the ``measured`` noise model of the raw counts
    (slope, intercept, the darkest level measured, the variance there)."""
    raw = volumes
    if offset is not None:
        volumes = volumes - offset
    if dark is not None:
        volumes = volumes - dark
    counts = volumes  # offset-free counts: what the camera model's noise follows
    gain_map = jnp.ones((), volumes.dtype) if flat is None else jnp.mean(flat) / flat
    volumes = volumes * gain_map
    if box is not None:
        background = jax.vmap(lambda v: darkest_box_mean(v, box))(volumes)
        volumes = volumes - background[:, None, None, None]
    else:
        background = jnp.zeros((volumes.shape[0],), volumes.dtype)
    scale = jnp.ones((1,), volumes.dtype)
    scale_full = jnp.ones((), volumes.dtype)
    if temporal == "volumes":
        totals = jnp.sum(volumes, axis=(1, 2, 3))
        scale = totals[0] / totals
        scale_full = scale[:, None, None, None]
    elif temporal == "planes":
        totals = jnp.sum(volumes[0], axis=(1, 2))
        scale = totals[0] / totals
        scale_full = scale[None, :, None, None]
    volumes = volumes * scale_full
    rnl = jnp.asarray(jnp.nan, volumes.dtype)
    if camera is not None:
        gain, read = camera
        variance = (jnp.maximum(counts, 0) * gain + read**2) / gain**2 * (gain_map * scale_full) ** 2
        rnl = jnp.sqrt(jnp.mean(variance)) / jnp.sqrt(jnp.mean(volumes**2))
    elif measured is not None:
        slope, intercept, lowest, floor = measured
        raw_variance = jnp.maximum(slope * jnp.maximum(raw, lowest) + intercept, floor)
        variance = raw_variance * (gain_map * scale_full) ** 2
        rnl = jnp.sqrt(jnp.mean(variance)) / jnp.sqrt(jnp.mean(volumes**2))
    return volumes, background, scale, rnl
