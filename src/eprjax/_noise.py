"""The noise model from the data: variance = slope * level + intercept, the Poisson-Gaussian
model of a photon-counting camera (Poisson in the electrons counted, Gaussian read noise),
fitted from the image itself when the camera's gain and read noise are not given.

The method follows Foi, Trimeche, Katkovnik and Egiazarian (IEEE Trans. Image Process. 17,
1737-1754, 2008) in its outline: the noise measured by a high-pass filter in which the
blurred signal hardly shows, against the local signal level, and a straight line fitted to
the two. Here the filter is the second difference along all three axes, d = (D2z D2y D2x g)
/ sqrt(216) ([1, -2, 1] along each; 216 = 6^3 its squared weights), at every voxel: white
noise of variance v gives E d^2 = v, and a signal reaches d only through its mixed sixth
derivative, which a microscope's blur leaves small (the first differences, the Haar detail,
let through far more: measured, the gain 3 % and the read noise up to 80 % off at 3000
photons). The level is the mean of the same 3x3x3 voxels. The filter's weights sum to zero,
so for Poisson light on a flat region the conditional mean of d^2 given that local mean is
exactly the Poisson variance at it (given the total, the counts are multinomial): binning by
a noisy level does not bias the line. The mean of d^2 in bins of level, and a line fitted to
them with weights from their standard errors.

In a camera's raw counts, slope = 1 / gain (gain in electrons per count) and the noise at the
camera's offset is the read noise: read (electrons) = sqrt(slope * offset + intercept) /
slope. Integer data carry the rounding's variance, 1/12 of a count squared, which is taken
off the intercept. Data that were scaled (prepdata's normalisation) keep the model's form
with other numbers. The read noise is measured only as well as the data reach down to the
offset: where the darkest region holds much light, it is an extrapolation (docs/tuning.md).

Noise correlated within the planes (interpolated, binned or filtered data: deskewing does it)
reaches a filter across the plane weakened; the planes being separate exposures, the second
difference along Z alone still sees a voxel's whole variance, and is used when it finds
clearly more (`CORRELATED`).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np
from scipy import ndimage

from ._errors import ParameterError

BINS = 24  # levels at which the noise is measured
LEAST_BLOCKS = 100  # a bin with fewer voxels is left out of the fit
MAX_VOXELS = 1 << 25  # larger volumes are measured on evenly spaced runs of planes
SECOND_DIFFERENCE = np.array([1.0, -2.0, 1.0])
OUTLIER = 6.0  # a bin this many standard errors off the line is left out
CORRELATED = 1.3  # the noise along Z alone this much above the 3-D filter's at the median level ...
CORRELATED_DARK = 1.15  # ... and this much at the darkest: correlated within the planes


@dataclasses.dataclass(frozen=True)
class NoiseModel:
    """The data's noise variance as a straight line in the signal level, in the data's units.

    Attributes:
        slope: variance per unit of level (1 / gain, gain in electrons per count, for raw
            counts); 0 for noise that does not depend on the signal.
        intercept: the variance at level 0.
        levels: the levels at which the noise was measured (one per bin).
        variances: the variance measured there.
        voxels: how many voxels' measurements went into each bin.
        lowest: the darkest level measured; the model is not extrapolated below it.
        integer: whether the data were whole numbers (their rounding adds 1/12 to the
            variance, which the read noise leaves out).
        covariance: of (slope, intercept), from the fit (the bins' standard errors).
        correlated: the noise was found correlated within the planes (interpolated, binned
            or filtered data) and was measured along Z alone.
    """

    slope: float
    intercept: float
    levels: np.ndarray
    variances: np.ndarray
    voxels: np.ndarray
    lowest: float
    integer: bool = False
    covariance: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros((2, 2)))
    correlated: bool = False

    def variance(self, level: Any) -> np.ndarray:
        """The noise variance at ``level`` (levels below the darkest measured count as it)."""
        v = self.slope * np.maximum(np.asarray(level, np.float64), self.lowest) + self.intercept
        return np.maximum(v, self.floor)

    @property
    def floor(self) -> float:
        """The smallest variance the model gives: at the darkest level measured."""
        return max(self.slope * self.lowest + self.intercept, 1e-12 * max(1.0, float(np.max(self.variances))))

    @property
    def gain(self) -> float:
        """Electrons per count, when the data are a camera's raw counts (inf: no Poisson part)."""
        return 1.0 / self.slope if self.slope > 0 else math.inf

    @property
    def gain_error(self) -> float:
        """The gain's standard error (from the fit)."""
        return math.sqrt(max(self.covariance[0, 0], 0.0)) / self.slope**2 if self.slope > 0 else math.nan

    def _read_noise(self, offset: float) -> tuple[float, float]:
        if not self.slope > 0:
            return math.nan, math.nan
        rounding = 1.0 / 12.0 if self.integer else 0.0  # whole counts: the rounding's variance is not the camera's
        squared = self.slope * offset + self.intercept - rounding  # counts^2 at the offset
        if squared <= 0:
            return 0.0, math.sqrt(max(self.covariance[1, 1] + offset**2 * self.covariance[0, 0], 0.0)) / self.slope
        root = math.sqrt(squared)
        grad = np.array([offset / (2 * root) / self.slope - root / self.slope**2, 1 / (2 * root) / self.slope])
        return root / self.slope, float(math.sqrt(max(grad @ self.covariance @ grad, 0.0)))

    def read_noise(self, offset: float) -> float:
        """The read noise in electrons RMS, when the data are raw counts with the camera
        adding ``offset`` counts: the noise at the offset (less the rounding's), in electrons."""
        return self._read_noise(offset)[0]

    def read_noise_error(self, offset: float) -> float:
        """The read noise's standard error (from the fit; large where the data hold no dark
        region, so that the offset's noise is an extrapolation)."""
        return self._read_noise(offset)[1]

    def voxel_variance(self, data: Any) -> np.ndarray:
        """The variance at each voxel of ``data`` (float32): the model at the local level (the
        mean of each voxel's 3x3x3 neighbourhood, so that the voxel's own noise hardly moves
        the level it is given)."""
        g = np.asarray(data, np.float32)
        size = [3 if n >= 3 else 1 for n in g.shape[-3:]]
        level = ndimage.uniform_filter(g, size=[1] * (g.ndim - 3) + size, mode="nearest")  # per segment
        return self.variance(level).astype(np.float32)

    def describe(self, offset: float | None = None) -> str:
        """One line: the model, and as a camera's numbers (gain, and with ``offset`` the read noise)."""
        line = f"noise variance {self.slope:.4g} x level + {self.intercept:.4g}"
        if self.slope > 0:
            line += f" (as raw counts: gain {self.gain:.3g} +- {self.gain_error:.2g} electrons per count"
            if offset is not None:
                line += f", read noise {self.read_noise(offset):.3g} +- {self.read_noise_error(offset):.2g} electrons at offset {offset:g}"
            line += ")"
        else:
            line += " (no Poisson part found: the noise does not grow with the signal)"
        sigma = math.sqrt(self.floor)
        if self.correlated:
            line += "; the noise is correlated within the planes (interpolated, binned or filtered data?): measured along Z alone"
        return line + f"; noise {sigma:.3g} RMS at the darkest level {self.lowest:.4g}, measured at {int(self.voxels.sum())} voxels"


def _detail_and_level(part: np.ndarray, axes: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    """d, the second difference along ``axes`` (see the module's notes), and the mean of
    the same voxels, at the voxels whose neighbourhood lies inside ``part``, flattened."""
    d = part
    for axis in axes:
        d = ndimage.correlate1d(d, SECOND_DIFFERENCE, axis=axis, mode="constant")
    level = ndimage.uniform_filter(part, [3 if a in axes else 1 for a in range(3)], mode="constant")
    inner = (slice(1, -1),) * 3
    scale = math.sqrt(float(np.sum(SECOND_DIFFERENCE**2)) ** len(axes))
    return (d[inner] / scale).ravel(), level[inner].ravel()


def _correlation_factor(axes: int = 3) -> float:
    """How many times fewer independent measurements the means of d^2 hold than voxels: d at
    neighbouring voxels shares noise, and for Gaussian noise Cov(d_p^2, d_q^2) = 2 rho_pq^2
    v^2, so the variance of a mean of d^2 grows by the sum of rho^2 over all lags (per axis,
    the filter's normalised autocorrelation, to the power of the axes filtered)."""
    k = SECOND_DIFFERENCE
    rho = np.correlate(k, k, mode="full") / np.sum(k * k)
    return float(np.sum(rho * rho) ** axes)


def _fit(levels, variances, counts, axes: int = 3) -> tuple[float, float, np.ndarray]:
    """variance = slope * level + intercept by least squares, each bin weighted by its
    inverse squared standard error (2 v^2 / n for a mean of n squares, times
    `_correlation_factor`), iterated on the line; slope 0 (one variance for all) where the
    data give a falling line. Returns (slope, intercept, their covariance)."""
    effective = counts / _correlation_factor(axes)
    w = effective / (2 * np.maximum(variances, 1e-30) ** 2)
    slope, intercept = 0.0, float(np.sum(w * variances) / np.sum(w))
    falling = len(levels) < 2 or not np.ptp(levels) > 0
    for _ in range(5):
        if not falling:
            a = np.stack([levels, np.ones_like(levels)], axis=1) * np.sqrt(w)[:, None]
            (slope, intercept), *_ = np.linalg.lstsq(a, variances * np.sqrt(w), rcond=None)
            if slope < 0:
                falling = True
        if falling:
            slope, intercept = 0.0, float(np.sum(w * variances) / np.sum(w))
        model = np.maximum(slope * levels + intercept, 1e-3 * np.max(variances))
        w = effective / (2 * model**2)
    if falling:
        covariance = np.diag([0.0, 1.0 / float(np.sum(w))])
    else:
        a = np.stack([levels, np.ones_like(levels)], axis=1)
        covariance = np.linalg.inv(a.T @ (a * w[:, None]))
    return float(slope), float(intercept), covariance


def estimate_noise(data: Any) -> NoiseModel:
    """Fit the Poisson-Gaussian noise model, variance = slope * level + intercept, to an
    image's own noise (the module's notes give the method).

    Args:
        data: one volume (Z, Y, X), at least 5 voxels along each axis, or segments of one
            (segments, Z, Y, X), measured together; the data as recorded (raw counts, for
            the camera's numbers) or as prepared.

    Returns:
        A `NoiseModel`; ``.variance(level)``, ``.voxel_variance(data)``, ``.gain``,
        ``.read_noise(offset)``.

    Raises:
        ParameterError: too small a volume, non-finite values, or too few voxels to
            measure the noise on.
    """
    g = np.asarray(data, np.float64)
    if g.ndim not in (3, 4) or min(g.shape[-3:]) < 5:
        raise ParameterError(
            f"the noise is measured on a (Z, Y, X) volume (or segments of one) of at least 5x5x5 voxels, got {tuple(np.shape(data))}"
        )
    if not np.all(np.isfinite(g)):
        raise ParameterError("the data hold NaN or infinite values: the noise cannot be measured")
    volumes = g if g.ndim == 4 else g[None]
    if g.size > MAX_VOXELS:  # runs of planes, evenly spaced
        run = 8
        runs = max(1, MAX_VOXELS // (run * g.shape[-2] * g.shape[-1] * len(volumes)))
        starts = np.unique(np.linspace(0, max(g.shape[-3] - run, 0), runs).astype(int))
        parts = [v[s : s + run] for v in volumes for s in starts]
    else:
        parts = list(volumes)
    # saturated or clipped voxels, and regions filled with one value (the padding that
    # deskewing or registration leaves), carry no noise: neighbourhoods that reach them are
    # left out (where the data's extremes are common; wherever 3x3x3 voxels are all equal)
    extremes = [edge for edge in (float(g.min()), float(g.max())) if np.mean(g == edge) > 1e-3]
    touched = []
    for p in parts:
        bad = ndimage.maximum_filter(p, 3, mode="nearest") == ndimage.minimum_filter(p, 3, mode="nearest")
        for edge in extremes:
            bad |= p == edge
        touched.append(ndimage.maximum_filter(bad.astype(np.uint8), 5, mode="constant")[1:-1, 1:-1, 1:-1].ravel())
    keep = np.concatenate(touched) == 0
    if keep.sum() < BINS * LEAST_BLOCKS:
        raise ParameterError(f"too few voxels to measure the noise on ({int(keep.sum())} away from saturated, clipped or constant ones)")
    integer = bool(np.all(g == np.round(g)))
    model = _measure(parts, keep, (0, 1, 2), integer)
    # the planes of a stack are separate exposures, so the noise is independent along Z; within
    # a plane, interpolation (deskewing), binning or filtering correlate it, and a filter across
    # the plane then sees less noise than a voxel holds: measured along Z alone as well, the
    # larger is taken when it is clearly larger (see the module's notes)
    along_z = _measure(parts, keep, (0,), integer)
    # correlation weakens the noise at every level, where the signal's own structure, which
    # the one-axis filter lets through more, grows with the level: clearly more at the median
    # level and more at the darkest too
    median, darkest = float(np.median(model.levels)), float(model.lowest)
    if along_z.variance(median) > CORRELATED * model.variance(median) and along_z.variance(darkest) > CORRELATED_DARK * model.variance(darkest):
        return dataclasses.replace(along_z, correlated=True)
    return model


def _measure(parts, keep, axes: tuple[int, ...], integer: bool) -> NoiseModel:
    """The model from the second difference along ``axes``, at the voxels ``keep`` says."""
    pairs = [_detail_and_level(p, axes) for p in parts]
    d2 = np.concatenate([d for d, _ in pairs])[keep] ** 2
    level = np.concatenate([lv for _, lv in pairs])[keep]
    edges = np.unique(np.quantile(level, np.linspace(0, 1, BINS + 1)))
    which = np.clip(np.searchsorted(edges, level, side="right") - 1, 0, len(edges) - 2)
    bins = len(edges) - 1
    counts = np.bincount(which, minlength=bins).astype(np.float64)
    means = np.bincount(which, weights=level, minlength=bins) / np.maximum(counts, 1)
    variances = np.bincount(which, weights=d2, minlength=bins) / np.maximum(counts, 1)
    use = counts >= LEAST_BLOCKS
    if use.sum() < 1:
        raise ParameterError("too few voxels to measure the noise on")
    n = len(axes)
    # bins far above the line (where the signal's structure reaches the filter: a bright bead)
    # are left out, one at a time, at most a third of them
    for _ in range(int(use.sum()) // 3):
        slope, intercept, covariance = _fit(means[use], variances[use], counts[use], n)
        model = np.maximum(slope * means + intercept, 1e-30)
        z = np.where(use, (variances - model) / (model * np.sqrt(2 * _correlation_factor(n) / np.maximum(counts, 1))), -np.inf)
        worst = int(np.argmax(np.abs(np.where(use, z, 0))))
        if abs(z[worst]) < OUTLIER:
            break
        use[worst] = False
    slope, intercept, covariance = _fit(means[use], variances[use], counts[use], n)
    return NoiseModel(
        slope=slope, intercept=intercept, levels=means[use], variances=variances[use],
        voxels=counts[use].astype(np.int64), lowest=float(means[use].min()), integer=integer,
        covariance=covariance,
    )


def noise_weights(variance: Any, scale: float | None = None) -> np.ndarray:
    """The data term's weights for ``restore(..., weights=)``: the inverse of the noise
    ``variance`` (per voxel, e.g. `NoiseModel.voxel_variance` or `camera_variance`), scaled
    to a mean of 1, so that alpha keeps its meaning (for uniform noise the weights are all 1
    and the restoration is the unweighted one). ``scale``: the mean of 1 / variance to scale
    by instead (one number for every segment or volume of a run, so that they share one
    alpha). float32."""
    v = np.asarray(variance, np.float64)
    if v.size == 0 or not np.all(np.isfinite(v)) or not np.all(v > 0):
        raise ParameterError("the noise variance must be finite and > 0 everywhere to weight by it")
    inverse = 1.0 / v
    mean = float(np.mean(inverse)) if scale is None else float(scale)
    return (inverse / mean).astype(np.float32)
