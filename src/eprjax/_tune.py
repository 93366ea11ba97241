"""Choosing the smoothness alpha from the data, over log alpha: the discrepancy solved for
with Newton steps on the restoration's implicit gradient (`_implicit`) and secant steps;
a reference's error minimised with optax (a zoom line search on the implicit gradient);
the trace-based criteria (sure, gcv) minimised from their values, because the trace jumps
where the active set changes and its gradient with the set held fixed misleads.

Criteria, each a function of the restoration f_alpha (object grid), the residual
r = g - H f_alpha on the N data voxels, and the influence operator A = d(H f)/dg =
H P M^-1 P H^T (P: the active set, M = P H^T H P + lam P):

- ``gcv``, generalised cross-validation (Golub, Heath & Wahba, Technometrics 1979), no noise
  model needed: V = N ||r||^2 / (N - tr A)^2.
- ``sure``, Stein's unbiased risk estimate of the error in the data space, for Gaussian
  noise of variance sigma^2 (per voxel or one number): ||r||^2 - sum sigma^2 +
  2 tr(Sigma A), reported relative to sum sigma^2.
- ``discrepancy`` (Morozov), with the degrees of freedom taken off: ||r||^2 should equal its
  expected value sum sigma^2 - tr(Sigma A); solved for log(||r||^2 / (sum sigma^2 -
  tr(Sigma A))) = 0 (a hair above: see `_root`).
- ``reference``: ||f - ref||^2 / ||ref||^2 for a known object (ground truth, or a high-SNR
  image of the same field) on the restoration's grid.

Traces are estimated with Rademacher probes (Hutchinson, 1989): tr(Sigma A) = E <y, A y>,
y = Sigma^(1/2) z, and <y, A y> = <b, M^-1 b> with b = P H^T y: one conjugate-gradient solve
per probe. The probes are drawn once (common random numbers), so the estimate is a smooth
function of alpha; its derivative in lam is -||M^-1 b||^2, with the active set held fixed,
as in the implicit gradients.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import time
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from ._arrays import to_jax
from ._errors import EprjaxError, ParameterError
from ._fft import batched
from ._implicit import active_solve, implicit_gradients
from ._noise import NoiseModel, estimate_noise
from ._operator import Grid, adjoint, default_pad, factor3, forward, make_grid, power_gain, psf_otf, weighted

CRITERIA = ("gcv", "sure", "discrepancy", "reference")
NEEDS_NOISE = ("sure", "discrepancy")
LOG_ALPHA_RANGE = (math.log(1e-9), math.log(10.0))
ROOT_TOLERANCE = 0.01  # the root sought: log(residual / its expected value) = this (1 % above) ...
ROOT_BAND = 0.03  # ... found once within this of it (measured: 3 % in the ratio moves alpha by a factor of about 1.5 near the root, the NRMSE by 1 to 2 %) ...
ROOT_STEP = math.log(1.5)  # ... and, by L's slope, within this of the root in log alpha
DISCREPANCY_LOWEST = math.log(1e-7)  # below, trial restorations rarely converge: the residual stops falling
DECADE = math.log(10.0)
MAX_DECADES = 3.0  # the longest step, in decades of alpha
MAX_DECADES_DOWN = 1.0  # ... towards smaller alpha, where trials converge slowly (measured on a real stack: 300 iterations three decades down)
LINE_SEARCH_STEPS = 5
CURVATURE = 0.3  # the line search stops where the slope has fallen to this share
GRADIENT_TOLERANCE = 1e-3  # d criterion / d log alpha
STEP_TOLERANCE = 0.1  # in log alpha: 10 %
TRACE_TOLERANCE = 0.03  # the trace's solves stop at this relative residual (or the trials' own, if tighter): measured, the trace moves by 3e-4 of itself from 1e-4 to 0.03, at half the cost
FLOOR_SLOPE = 0.025  # d log(residual / expected) / d log alpha under which, still above the target, the residual has a floor (the shared light-sheet stack: 0.019 over three decades; the noise's roots in simulations: 0.06 to 0.13)
FLOOR_MARGIN = 0.02  # ... and the alpha chosen is the largest within 2 % of the floor
NEAR_STRETCH = 1.25  # within FAR of the root, Newton steps this much longer than Newton's
FAR = 0.2  # |log(residual / its expected value)| beyond which a discrepancy trial's trace may be bounded by the last one's
PROGRESS_INTERVAL = 0.5  # seconds between progress reports (and chances to stop) in a trial


@dataclasses.dataclass(frozen=True)
class Tuning:
    """What `tune_alpha` returns.

    Attributes:
        alpha: the choice.
        criterion: which criterion was minimised.
        alphas: every alpha evaluated, in order.
        values: the criterion there (see the module's notes for each one's scale).
        evaluations: restorations run (one per alpha evaluated).
        seconds: the time the tuning took, compilation included.
        noise: the noise model measured on the data, where the noise was not given.
        iterations: each trial restoration's iterations (search method).
        trial_seconds: each trial's time, its criterion included (search method).
        stopped: why the tuning ended before its criterion was settled (the budget), or None.
        floor: the discrepancy only: where the residual levelled off above its expected
            value (the model's misfit, not the noise), that ratio; the alpha chosen is then
            the largest within `FLOOR_MARGIN` of it. None: it reached the noise.
    """

    alpha: float
    criterion: str
    alphas: np.ndarray
    values: np.ndarray
    evaluations: int
    seconds: float
    noise: NoiseModel | None = None
    iterations: np.ndarray | None = None
    trial_seconds: np.ndarray | None = None
    stopped: str | None = None
    floor: float | None = None

    def describe(self) -> str:
        best = int(np.argmin(np.abs(self.alphas - self.alpha)))
        return (
            f"alpha {self.alpha:.4g} by {self.criterion} ({UNITS[self.criterion]} {shown(self.criterion, self.values[best]):.4g}), "
            f"{self.evaluations} restorations, {self.seconds:.1f} s" + (f"; {self.stopped}" if self.stopped else "")
            + (
                f"; the residual levels off at {self.floor:.3g} times its expected value (what the model cannot fit, not the noise): "
                "the largest alpha within 2 % of that floor" if self.floor is not None else ""
            )
        )

    def table(self) -> list[str]:
        """One line per trial, in order: alpha, the criterion in its unit (`UNITS`), the
        trial's iterations and seconds; the choice marked."""
        head = f"{'trial':>5}  {'alpha':>10}  {UNITS[self.criterion]:>30}  {'iterations':>10}  {'seconds':>8}"
        rows = [head]
        for i, (a, v) in enumerate(zip(self.alphas, self.values, strict=True)):
            k = int(self.iterations[i]) if self.iterations is not None and i < len(self.iterations) else 0
            t = float(self.trial_seconds[i]) if self.trial_seconds is not None and i < len(self.trial_seconds) else math.nan
            mark = "  <- chosen" if a == self.alpha else ""
            rows.append(f"{i + 1:>5}  {a:>10.4g}  {shown(self.criterion, v):>30.5g}  {k:>10d}  {t:>8.1f}{mark}")
        return rows


UNITS = {
    "discrepancy": "residual / its expected value",  # 1: the restoration fits the data to the noise
    "sure": "risk / noise",  # SURE over the noise's total variance
    "gcv": "log GCV",
    "reference": "relative error",  # ||f - ref|| / ||ref||
}


def shown(criterion: str, value: float) -> float:
    """A criterion's internal value in the unit of `UNITS` (the discrepancy and the
    reference are handled as logarithms)."""
    if criterion == "discrepancy":
        return math.exp(value)
    if criterion == "reference":
        return math.exp(value / 2)
    return float(value)


def noise_variance_from_rnl(data: Any, rnl: float) -> float:
    """The noise variance that prepdata's residual noise limit implies: RNL = noise RMS /
    signal RMS, so sigma^2 = RNL^2 * mean(g^2)."""
    g = np.asarray(data, np.float64)
    return float(rnl) ** 2 * float(np.mean(g * g))


def camera_variance(data: Any, *, gain: float, read_noise: float, offset: float = 0.0) -> np.ndarray:
    """Per-voxel noise variance, in counts^2, of raw camera counts: Poisson in the electrons
    ((g - offset) / gain of them) plus Gaussian read noise (electrons RMS)."""
    if not gain > 0 or not read_noise >= 0:
        raise ParameterError(f"gain must be > 0 and read noise >= 0, got {gain} and {read_noise}")
    g = np.asarray(data, np.float64)
    return (np.maximum(g - offset, 0) / gain + (read_noise / gain) ** 2).astype(np.float32)


@functools.cache
def _trace_function(grid: Grid):
    """tr(Sigma A) by Hutchinson with fixed probes y (already scaled by Sigma^(1/2)), and its
    derivative in alpha (the active set, from f, held fixed); solves to ``tol``, in at most
    the restoration's own iteration cap."""

    def solves(alpha, h, f, probes, tol, max_iterations, root):
        otf, s = psf_otf(h, grid)
        otf = weighted(otf, root)
        lam = alpha * s * s * power_gain(grid)
        active = f > 0

        def one(y):
            b = adjoint(otf, y, grid)
            w, _ = active_solve(otf, lam, active, b, grid, tol=tol, max_iterations=max_iterations)
            return jnp.sum(b * w * active), jnp.sum(w * w)

        quad, ww = jax.vmap(one)(probes)
        return jnp.mean(quad), jnp.mean(ww) * s * s * power_gain(grid)

    @jax.custom_vjp
    def trace(alpha, h, f, probes, tol, max_iterations, root=None):
        return solves(alpha, h, f, probes, tol, max_iterations, root)[0]

    def fwd(alpha, h, f, probes, tol, max_iterations, root=None):
        value, slope = solves(alpha, h, f, probes, tol, max_iterations, root)
        return value, -slope

    def bwd(slope, cotangent):
        return cotangent * slope, None, None, None, None, None, None

    trace.defvjp(fwd, bwd)
    return trace


def _terms(alpha, f, g, h, probes, variance, reference, tol, max_iterations, root=None, *, grid: Grid, kind: str):
    """The sums a criterion is made of, at the restoration ``f`` (object grid) of ``g``;
    with weights (``root``, their square roots) the residual is W^(1/2) (g - H f), and
    ``variance`` and ``probes`` are the weighted noise's."""
    otf, _ = psf_otf(h, grid)
    r = g - forward(otf, f, grid)
    if root is not None:
        r = root * r
    terms = {"rr": jnp.sum(r * r), "n": jnp.asarray(g.size, g.dtype), "noise": jnp.sum(jnp.broadcast_to(variance, g.shape))}
    if kind == "reference":
        d = f[grid.data_slices] - reference
        terms.update(error=jnp.sum(d * d), norm=jnp.sum(reference * reference))
    elif kind != "residual":  # the residual alone: the discrepancy with its trace known
        loose = jnp.maximum(tol, TRACE_TOLERANCE)
        terms["trace"] = _trace_function(grid)(alpha, h, jax.lax.stop_gradient(f), probes, loose, max_iterations, root)
    return terms


def _over_segments(parts, g, variance, reference, *rest):
    """``parts`` (a dict of sums) over one volume, or (a leading axis) over segments, added
    (None among ``rest``: no weights)."""
    if g.ndim == 4:
        axes = (0, 0 if jnp.ndim(variance) == 4 else None, 0 if jnp.ndim(reference) == 4 else None, *(None if r is None else 0 for r in rest))
        with batched(g.shape[0]):
            terms = jax.vmap(parts, in_axes=axes)(g, variance, reference, *rest)
        return {k: jnp.sum(v) for k, v in terms.items()}
    return parts(g, variance, reference, *rest)


def _criterion(log_alpha, g, h, probes, variance, reference, tol, max_iterations, root=None, *, grid: Grid, kind: str):
    """The criterion at alpha = exp(log_alpha), the restoration run inside (for optax's line
    search, which calls it as it goes)."""
    from ._restore import _differentiable

    alpha = jnp.exp(log_alpha)
    core = _differentiable(grid, 0)

    def parts(g, variance, reference, probes, root):
        f = core(g, h, alpha, tol, max_iterations, root)[0]
        return _terms(alpha, f, g, h, probes, variance, reference, tol, max_iterations, root, grid=grid, kind=kind)

    terms = _over_segments(parts, g, variance, reference, probes, root)
    return _combine(terms, kind)


@functools.cache
def _given(grid: Grid):
    """f, as restored elsewhere, with its implicit derivative in alpha (`_implicit`)."""
    @jax.custom_vjp
    def given(alpha, f, g, h, tol, max_iterations, root):
        return f

    def fwd(alpha, f, g, h, tol, max_iterations, root):
        return f, (alpha, f, g, h, tol, max_iterations, root)

    def bwd(residuals, cotangent):
        alpha, f, g, h, tol, max_iterations, root = residuals
        # the slope steers Newton steps: a few percent will do (as for the trace)
        _, _, dalpha, _ = implicit_gradients(
            g, h, alpha, f, cotangent, root, grid=grid, tol=jnp.maximum(tol, TRACE_TOLERANCE), max_iterations=max_iterations,
        )
        return (
            dalpha, jnp.zeros_like(f), jnp.zeros_like(g), jnp.zeros_like(h), jnp.zeros_like(tol), None,
            None if root is None else jnp.zeros_like(root),
        )

    given.defvjp(fwd, bwd)
    return given


def _criterion_at(log_alpha, f, g, h, probes, variance, reference, tol, max_iterations, root=None, *, grid: Grid, kind: str):
    """The criterion at alpha = exp(log_alpha) for its restoration ``f`` (object grid; one
    per segment), differentiable in log alpha through f's implicit derivative."""
    alpha = jnp.exp(log_alpha)
    given = _given(grid)

    def parts(g, variance, reference, probes, f, root):
        f = given(alpha, f, g, h, tol, max_iterations, root)
        return _terms(alpha, f, g, h, probes, variance, reference, tol, max_iterations, root, grid=grid, kind=kind)

    terms = _over_segments(parts, g, variance, reference, probes, f, root)
    return _combine(terms, kind), terms


def _combine(t, kind: str):
    if kind == "residual":
        return jnp.log(t["rr"])
    if kind == "reference":
        return jnp.log(t["error"] / t["norm"])
    if kind == "discrepancy":
        # a root is sought: the residual at its expected value, sum sigma^2 - tr(Sigma A); the
        # trace's slope left out (the active set's changes make it misleading; the secant
        # steps need only values)
        return jnp.log(t["rr"] / (t["noise"] - jax.lax.stop_gradient(t["trace"])))
    if kind == "gcv":
        return jnp.log(t["n"] * t["rr"] / (t["n"] - t["trace"]) ** 2)
    return (t["rr"] - t["noise"] + 2 * t["trace"]) / t["noise"]  # sure


def _optimiser():
    """Each step: a decade downhill (by the gradient's sign), scaled by optax's zoom line
    search (cubic interpolation of values and gradients; strong Wolfe conditions, the slope
    down to `CURVATURE` of its start). In one dimension two or three such steps settle."""
    import optax

    downhill = optax.GradientTransformation(
        lambda params: optax.EmptyState(),
        lambda updates, state, params=None: (jax.tree.map(lambda d: -jnp.sign(d) * DECADE, updates), state),
    )
    return optax.chain(
        downhill,
        optax.scale_by_zoom_linesearch(max_linesearch_steps=LINE_SEARCH_STEPS, max_learning_rate=MAX_DECADES, curv_rtol=CURVATURE),
    )


_RECORDERS: list[Any] = []  # where the evaluations of the tuning in progress go


def _record(log_alpha, value) -> None:
    if _RECORDERS:
        _RECORDERS[-1](float(np.exp(log_alpha)), float(value))


@functools.partial(jax.jit, static_argnames=("grid", "kind"))
def _tuning_step(log_alpha, state, g, h, probes, variance, reference, tol, max_iterations, root=None, *, grid: Grid, kind: str):
    """One step of `_optimiser` on the criterion, compiled once per shape and criterion."""
    import optax

    lo, hi = LOG_ALPHA_RANGE

    def objective(x):
        x = jnp.clip(x, lo, hi)
        value = _criterion(x, g, h, probes, variance, reference, tol, max_iterations, root, grid=grid, kind=kind)
        jax.debug.callback(_record, x, value)
        return value**2 if kind == "discrepancy" else value  # a root, as a minimum

    value, grad = optax.value_and_grad_from_state(objective)(log_alpha, state=state)
    updates, state = _optimiser().update(grad, state, log_alpha, value=value, grad=grad, value_fn=objective)
    return value, grad, updates, state


@functools.partial(jax.jit, static_argnames=("grid", "kind", "slope"))
def _value_and_slope(log_alpha, f, g, h, probes, variance, reference, tol, max_iterations, root=None, *, grid: Grid, kind: str, slope: bool):
    """The criterion at the restoration ``f``, (``slope``) its derivative in log alpha, and
    the sums it is made of; compiled once per shape and criterion. ``kind`` may also be
    "residual": log ||r||^2 alone, for a discrepancy whose trace is known."""
    args = (log_alpha, f, g, h, probes, variance, reference, tol, max_iterations, root)
    if slope:
        (value, terms), d = jax.value_and_grad(_criterion_at, has_aux=True)(*args, grid=grid, kind=kind)
        return value, d, terms
    value, terms = _criterion_at(*args, grid=grid, kind=kind)
    return value, jnp.zeros_like(log_alpha), terms


def _root(evaluate, x0: float, lo: float, hi: float, steps: int) -> tuple[float, float | None]:
    """The root of an increasing function L(x) of x = log alpha, L = log(residual / its
    expected value). Until the root is bracketed, Newton steps with L's slope, doubled (at
    least half a decade, at most `MAX_DECADES` up and `MAX_DECADES_DOWN` down) so as to step
    over it, or within `FAR` of it only `NEAR_STRETCH` times Newton's; then secant steps on
    L's values inside the bracket (Anderson-Bjorck); until L is within `ROOT_BAND` of the
    target or the bracket is narrower than `STEP_TOLERANCE`. ``evaluate(x, slope)`` gives L
    and, when asked, its slope (NaN when not): ``slope`` is True, False, or a function of L's
    value that says whether the slope is wanted, so that the slope's solve is spared where a
    trial brings the bracket (a secant step follows, and the bracket's slope serves). Returns
    (the x chosen, the floor or None).

    The target is L = `ROOT_TOLERANCE` (the residual 1 % above its expected value), so
    that where L stays near 0 over a range (little signal: any alpha there fits the data to
    the noise) the most regularised alpha consistent with the data is taken.

    A floor: where, going down in alpha, L is still above the target but hardly falls any
    more (slope under `FLOOR_SLOPE`), the residual is set by what the model cannot fit (the
    PSF's mismatch, the field's edges), not by the noise, and smaller alphas only fit the
    noise closer elsewhere. The target then becomes the floor plus `FLOOR_MARGIN`: the
    largest alpha whose residual is within that of the floor."""
    target = ROOT_TOLERANCE
    points: list[tuple[float, float]] = []
    floor = None

    def at(x, slope):
        value, d = evaluate(x, slope)
        points.append((x, value))
        return value, d

    def bracket():
        """The nearest points below and above the target."""
        under = [(x, v - target) for x, v in points if v - target < 0]
        over = [(x, v - target) for x, v in points if v - target > 0]
        return (max(under) if under else None), (min(over) if over else None)

    def settled(L, slope):
        """Within the band, and (where L's slope is known: Newton's or the bracket's) no
        further than `ROOT_STEP` in log alpha from the root by it: where L is flat, a small
        L still leaves alpha loose."""
        return abs(L) < ROOT_BAND and not (slope > 0 and abs(L) / slope > ROOT_STEP)

    x = x0
    value, slope = at(x, True)
    below = above = None
    for _ in range(steps):
        L = value - target
        if settled(L, slope):
            return x, floor
        if L < 0:
            below = (x, L)
        else:
            above = (x, L)
        bracketed = below is not None and above is not None
        if not bracketed and floor is None and L > 0 and 0 <= slope < FLOOR_SLOPE and x < points[0][0]:
            floor = value
            target = value + FLOOR_MARGIN
            below, above = bracket()
            if above is None:  # every trial is within the margin of the floor: the largest alpha
                return max(points)[0], floor
            bracketed = True
        if bracketed:
            (xa, la), (xb, lb) = below, above
            if abs(xb - xa) < STEP_TOLERANCE:
                break
            nx = xa - la * (xb - xa) / (lb - la)
        else:
            newton = -L / slope if slope > 0 else math.copysign(MAX_DECADES * DECADE, -L)
            longest = (MAX_DECADES if newton > 0 else MAX_DECADES_DOWN) * DECADE
            if abs(L) < FAR and slope > 0:
                # near: the Newton step, a little longer (to bracket the root if it misses)
                nx = x + math.copysign(min(NEAR_STRETCH * abs(newton), longest), newton)
            else:
                nx = x + math.copysign(min(max(2 * abs(newton), 0.5 * DECADE), longest), newton)
        nx = float(np.clip(nx, lo, hi))
        if nx == x:
            break  # at the end of the range
        x = nx

        def wanted(value, below=below, above=above, bracketed=bracketed):
            """The slope is wanted unless the bracket is had, or this value makes it."""
            L = value - target
            return not (bracketed or (L < 0 and above is not None) or (L > 0 and below is not None))

        value, slope = at(x, wanted)
        L = value - target
        if not bracketed and not wanted(value):  # the bracket's slope, for `settled`
            other = above if L < 0 else below
            slope = (L - other[1]) / (x - other[0]) if x != other[0] else math.nan
        if bracketed:  # Anderson-Bjorck: keep the secant from stalling on one side
            slope = (above[1] - below[1]) / (above[0] - below[0])  # the bracket's
            if L < 0:
                m = 1 - L / below[1]
                above = (above[0], above[1] * (m if m > 0 else 0.5))
            else:
                m = 1 - L / above[1]
                below = (below[0], below[1] * (m if m > 0 else 0.5))
        elif slope <= 0:
            break  # not increasing here: the trial restorations stopped short of converging
    if abs(value - target) < ROOT_BAND:
        return x, floor  # (L's slope aside: the search ended)
    below, above = bracket()
    if below is not None and above is not None:
        return min(points, key=lambda p: abs(p[1] - target))[0], floor
    if below is None:
        # above the target everywhere: a floor after all (the slope never said so clearly)
        lowest = min(v for _, v in points)
        if lowest > ROOT_TOLERANCE + ROOT_BAND and len(points) > 1 and (floor is not None or _flat(points)):
            return max(x for x, v in points if v <= lowest + FLOOR_MARGIN), lowest
    raise _NoRoot(value)


def _best_so_far(xs: np.ndarray, values: np.ndarray) -> int:
    """Which discrepancy trial to keep when the search stopped early: the one nearest the
    target when some lie on either side of it; above it everywhere, the largest alpha within
    `FLOOR_MARGIN` of the lowest residual (a floor, as `_root` takes it); below it
    everywhere, the largest alpha."""
    over = values > ROOT_TOLERANCE
    if over.all():
        return int(np.argmax(np.where(values <= values.min() + FLOOR_MARGIN, xs, -np.inf)))
    if not over.any():
        return int(np.argmax(xs))
    return int(np.argmin(np.abs(values - ROOT_TOLERANCE)))


def _flat(points) -> bool:
    """Whether the two smallest alphas tried give nearly the same L (under `FLOOR_SLOPE`
    per unit of log alpha between them): a floor."""
    (xa, va), (xb, vb) = sorted(points)[:2]
    return xb > xa and (vb - va) / (xb - xa) < FLOOR_SLOPE


class NoAlphaFound(EprjaxError):
    """The discrepancy principle found no alpha: the residual stays on one side of its
    expected value at every alpha tried (the message says which side, and what to do)."""


class _NoRoot(Exception):
    pass


class _Budget(Exception):
    """The tuning's time budget ran out."""


def _minimum(evaluate, x0: float, lo: float, hi: float, steps: int) -> None:
    """The minimum of a function of x = log alpha from its values alone: a decade at a time
    (doubling) until a lower point lies between two higher ones, then parabolic steps
    through the best three (golden-section where a parabola would not help), until the
    bracket is narrower than `STEP_TOLERANCE`."""
    points = {x0: evaluate(x0)[0]}
    step = DECADE
    second = min(hi, x0 + step) if x0 + step <= hi else max(lo, x0 - step)
    points[second] = evaluate(second)[0]
    direction = 1.0 if (points[second] < points[x0]) == (second > x0) else -1.0
    for _ in range(steps):
        xs = sorted(points)
        best = min(xs, key=points.get)
        i = xs.index(best)
        if 0 < i < len(xs) - 1:
            a, c = xs[i - 1], xs[i + 1]
            if c - a < STEP_TOLERANCE:
                return
            fa, fb, fc = points[a], points[best], points[c]
            denominator = (best - a) * (fb - fc) - (best - c) * (fb - fa)
            nx = best - 0.5 * ((best - a) ** 2 * (fb - fc) - (best - c) ** 2 * (fb - fa)) / denominator if denominator else best
            if not a < nx < c or abs(nx - best) < STEP_TOLERANCE / 4:
                wide = (a, best) if best - a > c - best else (best, c)
                nx = wide[0] + 0.382 * (wide[1] - wide[0]) if wide[0] == best else wide[1] - 0.382 * (wide[1] - wide[0])
        else:
            edge = xs[0] if i == 0 else xs[-1]
            direction = -1.0 if i == 0 else 1.0
            nx = float(np.clip(edge + direction * step, lo, hi))
            step *= 2
            if nx in points:
                return  # the end of the range is the best
        points[nx] = evaluate(nx)[0]


def tune_alpha(
    data: Any,
    psf: Any,
    *,
    criterion: str = "discrepancy",
    noise_variance: Any = None,
    reference: Any = None,
    start: float | None = None,
    pad: int | Sequence[int] | None = None,
    factor: int | Sequence[int] = 1,
    tol: float = 1e-3,
    max_iterations: int = 300,
    probes: int = 1,
    steps: int = 10,
    seed: int = 0,
    method: str = "search",
    callback: Callable[[float, float], None] | None = None,
    progress: Callable[[float, int, float], None] | None = None,
    max_seconds: float | None = None,
    weights: Any = None,
    alphas: Sequence[float] | None = None,
) -> Tuning:
    """Choose alpha for ``restore(data, psf, alpha=...)`` from the data: a criterion over log
    alpha, solved for or minimised (see ``method``), with gradients by implicit
    differentiation where they can be trusted.

    Args:
        data: as for `restore`: one volume (Z, Y, X), or several segments of one size
            (segments, Z, Y, X), taken together (one alpha for all: the criterion over
            their union).
        psf: as for `restore`.
        criterion: ``"discrepancy"`` (default) or ``"sure"`` (use the noise: given, or
            measured on the data), ``"gcv"`` (no noise model; tends to choose alpha too
            small), ``"reference"`` (needs ``reference``). See the module notes.
        noise_variance: the noise variance in the data's units: one number or per voxel
            (`camera_variance`, `noise_variance_from_rnl`); None: measured on the data
            themselves (`estimate_noise`), for the criteria that need it.
        reference: the object to compare with, on the restoration's grid.
        start: the first alpha (default: RNL^2, the noise's power over the data's, when the
            noise is given; else 1e-3).
        pad: as for `restore`; each trial restores with it.
        factor: as for `restore`.
        tol: as for `restore`: each trial's tolerance.
        max_iterations: as for `restore`: each trial's iteration cap.
        probes: Hutchinson probes for the trace (gcv, sure).
        steps: the most line-search steps.
        seed: for the probes.
        method: ``"search"`` (default): the discrepancy solved for (Newton steps on the
            implicit gradient, then secant steps), sure and gcv minimised from their values
            (bracket, then parabolic steps), reference by optax; ``"optax"``: every
            criterion minimised by optax (a zoom line search along the implicit gradient;
            the discrepancy as its square): slower, and for sure and gcv misled by the
            trace's jumps (docs/tuning.md has the measurements).
        callback: called with (alpha, value) after each evaluation.
        progress: called as each trial restoration goes (about every `PROGRESS_INTERVAL`
            seconds) with (the trial's alpha, iterations done, relative gradient); it may
            raise to stop the tuning (KeyboardInterrupt, for instance).
        max_seconds: the budget: no trial starts after this many seconds, and one under
            way stops there once another has finished; the best alpha so far is returned,
            and ``.stopped`` says so. ``steps`` bounds the trials too.
        weights: as for `restore`: the data term's weights, each trial restored with them;
            the criteria then count the weighted residual against the weighted noise
            (with W = 1 / variance, `noise_weights`, the discrepancy is a chi-square test).
        alphas: a sweep instead of a search: the criterion at each of these alphas (one
            trial each, exact: no trace is bounded by another's), to look at it beside a
            search's choice; the choice is then the best of them (the discrepancy's nearest
            its target, the others' smallest). ``start``, ``steps`` and ``method`` are unused.

    Returns:
        A `Tuning`: ``.alpha`` and the criterion along the way.
    """
    began = time.perf_counter()
    if method not in ("search", "optax"):
        raise ParameterError(f"method must be 'search' or 'optax', got {method!r}")
    if criterion not in CRITERIA:
        raise ParameterError(f"criterion must be one of {', '.join(CRITERIA)}, got {criterion!r}")
    g = to_jax(data, "data")
    h = to_jax(psf, "psf")
    if g.ndim not in (3, 4) or h.ndim != 3 or any(n < 1 for n in g.shape):
        raise ParameterError(
            f"tuning takes one (Z, Y, X) volume, or (segments, Z, Y, X), and a (Z, Y, X) PSF; got {tuple(g.shape)} and {tuple(h.shape)}"
        )
    dtype = jnp.float64 if (g.dtype == jnp.float64 and jax.config.jax_enable_x64) else jnp.float32
    g, h = g.astype(dtype), h.astype(dtype)
    k = factor3(factor)
    fine_shape = tuple(n * f for n, f in zip(g.shape[-3:], k, strict=True))
    if pad is None:
        pad = default_pad(np.asarray(h), fine_shape)
    pad3 = (pad,) * 3 if isinstance(pad, (int, np.integer)) else tuple(pad)
    grid = make_grid(g.shape[-3:], pad3, k)
    variance = jnp.zeros((), dtype)
    measured = None
    if criterion in NEEDS_NOISE and noise_variance is None:
        volume = np.asarray(g, np.float64)
        try:
            measured = estimate_noise(volume)
        except ParameterError as e:
            raise ParameterError(
                f"the {criterion} criterion needs the noise, and it could not be measured on the data ({e}): "
                "give noise_variance (the camera's gain and read noise) or use the gcv criterion"
            ) from None
        noise_variance = measured.voxel_variance(volume)
    if noise_variance is not None:
        variance = jnp.asarray(noise_variance, dtype)
        if (variance.ndim != 0 and variance.shape != g.shape) or not bool(jnp.all(variance >= 0)):
            raise ParameterError("noise_variance must be one number >= 0 or one per data voxel")
    root = None
    if weights is not None:
        from ._restore import _weight_roots

        root = _weight_roots(weights, g)
        if criterion in NEEDS_NOISE:
            variance = root * root * variance  # the weighted residual's noise
    ref = jnp.zeros((), dtype)
    if criterion == "reference":
        if reference is None:
            raise ParameterError("the reference criterion needs a reference object")
        ref = to_jax(reference, "reference").astype(dtype)
        want = (*g.shape[:-3], *fine_shape)
        if ref.shape != want:
            raise ParameterError(f"the reference must have the restoration's shape {want}, got {tuple(ref.shape)}")
    key = jax.random.PRNGKey(seed)
    z = jax.random.rademacher(key, (*g.shape[:-3], max(1, int(probes)), *g.shape[-3:]), dtype)
    scaled = z * jnp.sqrt(jnp.expand_dims(variance, -4) if variance.ndim else variance) if criterion in NEEDS_NOISE else z
    if start is None and noise_variance is not None:
        # RNL^2, the originals' advice: the noise's power over the data's
        start = float(np.clip(float(jnp.sum(jnp.broadcast_to(variance, g.shape))) / max(float(jnp.sum(g * g) if root is None else jnp.sum((root * g) ** 2)), 1e-30), 1e-6, 1.0))
    log_alpha = jnp.asarray(math.log(start if start is not None else 1e-3), dtype)
    if not LOG_ALPHA_RANGE[0] <= float(log_alpha) <= LOG_ALPHA_RANGE[1]:
        raise ParameterError(f"start must be between {math.exp(LOG_ALPHA_RANGE[0]):g} and {math.exp(LOG_ALPHA_RANGE[1]):g}")

    seen: list[tuple[float, float]] = []

    def record(alpha, value):
        seen.append((alpha, value))
        if callback is not None:
            callback(alpha, value)

    lo, hi = LOG_ALPHA_RANGE
    arrays = (g, h, scaled, variance, ref, jnp.asarray(tol, dtype), jnp.asarray(max_iterations), root)

    # each trial restoration starts from the last one's dual c, scaled by the ratio of the
    # alphas (c = r / lam at the minimum, and the residual r changes slowly with alpha)
    warm: dict[str, Any] = {"x": None, "dual": None}
    trials: list[tuple[int, float]] = []  # per evaluation: iterations, seconds

    def spent() -> None:
        """The budget ran out (once a trial has finished: a first result is always had)."""
        if max_seconds is not None and seen and time.perf_counter() - began > max_seconds:
            raise _Budget

    known: dict[str, Any] = {"x": math.inf, "trace": 0.0}  # the last trace computed, and where (at alpha = inf it is 0)
    noise_total = float(jnp.sum(jnp.broadcast_to(variance, g.shape)))

    def evaluate(x: float, slope: bool | Callable[[float], bool] = False, exact: bool = False) -> tuple[float, float]:
        """The criterion at alpha = exp(x), from a trial restoration started from the last
        one's dual (``exact``: the trace always computed, never bounded); its slope too where
        ``slope`` is True, or a function of the value that says so (the value is computed
        first, and the slope's solve only where it is wanted; NaN where not)."""
        from ._restore import _solve_reporting

        spent()
        started = time.perf_counter()

        def report(k, rel, *_):
            spent()
            if progress is not None:
                progress(math.exp(x), int(k), float(rel))

        dual = None if warm["x"] is None else warm["dual"] * math.exp(warm["x"] - x)
        f, k, _, _, _, dual = _solve_reporting(
            g, h, jnp.asarray(math.exp(x), dtype), arrays[5], int(max_iterations), report, PROGRESS_INTERVAL,
            grid=grid, history_length=0, start=dual, crop=False, root=root,
        )
        done = int(np.max(np.asarray(k)))
        value = None

        def wants(value: float) -> bool:
            return slope(value) if callable(slope) else bool(slope)

        if criterion == "discrepancy" and not exact:
            # the trace changes slowly with alpha and falls as it grows: the last trial's is a
            # bound on this one's (from below when alpha went down, from above when up); where
            # even with it the residual is far from its expected value, the trace's solve is
            # spared (the Newton step needs only the residual's slope)
            # its value first, the slope's solve (the larger part) only where the guess is
            # taken and the slope wanted
            log_rr, _, _ = _value_and_slope(jnp.asarray(x, dtype), f, *arrays, grid=grid, kind="residual", slope=False)
            guess = float(log_rr) - math.log(max(noise_total - known["trace"], 1e-30))
            if (guess - ROOT_TOLERANCE > FAR and x < known["x"]) or (guess - ROOT_TOLERANCE < -FAR and x > known["x"]):
                value, d = guess, math.nan
                if wants(guess):
                    _, d, _ = _value_and_slope(jnp.asarray(x, dtype), f, *arrays, grid=grid, kind="residual", slope=True)
        if value is None:
            # where the slope depends on the value: the value alone first (the slope's solves
            # come on top of the value's; where the value brings the bracket, none is wanted)
            first = slope if isinstance(slope, bool) else False
            value, d, terms = _value_and_slope(jnp.asarray(x, dtype), f, *arrays, grid=grid, kind=criterion, slope=first)
            if not first:
                d = math.nan
                if wants(float(value)):
                    value, d, terms = _value_and_slope(jnp.asarray(x, dtype), f, *arrays, grid=grid, kind=criterion, slope=True)
            if criterion == "discrepancy":
                known.update(x=x, trace=float(terms["trace"]))
        warm.update(x=x, dual=dual)
        value, d = float(value), float(d)
        trials.append((done, time.perf_counter() - started))
        record(math.exp(x), value)
        return value, d

    stopped = None
    choice = floor = None
    if alphas is not None:
        xs = np.log(np.asarray(alphas, np.float64).ravel()) if np.all(np.asarray(alphas) > 0) else np.array([math.nan])
        if xs.size == 0 or not np.all(np.isfinite(xs)) or xs.min() < lo or xs.max() > hi:
            raise ParameterError(f"alphas must be one or more numbers between {math.exp(lo):g} and {math.exp(hi):g}")
        try:
            for x in sorted(xs, reverse=True):  # from large alpha down: each trial starts warm from a faster one
                evaluate(float(x), exact=True)
        except _Budget:
            stopped = f"the budget of {max_seconds:g} s ran out after {len(seen)} of {xs.size} alphas"
    elif criterion == "reference" or method == "optax":
        state = _optimiser().init(log_alpha)
        _RECORDERS.append(record)
        try:
            for _ in range(min(int(steps), 3)):
                _, grad, updates, state = _tuning_step(log_alpha, state, *arrays, grid=grid, kind=criterion)
                if abs(float(grad)) < GRADIENT_TOLERANCE or abs(float(updates)) < STEP_TOLERANCE:
                    break
                log_alpha = jnp.clip(log_alpha + updates, lo, hi)
        finally:
            _RECORDERS.pop()
    else:
        try:
            if criterion == "discrepancy":
                choice, floor = _root(evaluate, max(float(log_alpha), DISCREPANCY_LOWEST), DISCREPANCY_LOWEST, hi, int(steps))
            else:
                _minimum(evaluate, float(log_alpha), lo, hi, int(steps))
        except _Budget:
            stopped = f"the budget of {max_seconds:g} s ran out after {len(seen)} trials: the best alpha so far"
        except _NoRoot:
            ratios = np.exp([v for _, v in seen])
            raise NoAlphaFound(
                f"the discrepancy principle found no alpha: the residual is {ratios.min():.3g} to {ratios.max():.3g} "
                f"times its expected value at every alpha tried ({min(a for a, _ in seen):.3g} to {max(a for a, _ in seen):.3g})"
                + ("; the model does not fit the data to the noise level (a PSF unlike the data's, or noise underestimated)"
                   if ratios.min() > 1 else "; the noise is overestimated")
                + ": use the sure or gcv criterion"
            ) from None

    alphas = np.array([a for a, _ in seen])
    values = np.array([v for _, v in seen])
    if criterion == "discrepancy" and alphas is not None:
        best = int(np.argmin(np.abs(values - ROOT_TOLERANCE)))
    elif criterion == "discrepancy" and choice is not None:
        best = int(np.argmin(np.abs(np.log(alphas) - choice)))
    elif criterion == "discrepancy":  # the budget ran out: the best so far, floors counted
        best = _best_so_far(np.log(alphas), values)
    else:
        best = int(np.argmin(values))
    return Tuning(
        alpha=float(alphas[best]), criterion=criterion, alphas=alphas, values=values, floor=None if floor is None else math.exp(floor),
        evaluations=len(seen), seconds=time.perf_counter() - began, noise=measured,
        iterations=np.array([k for k, _ in trials] or [0] * len(seen), dtype=np.int64),
        trial_seconds=np.array([t for _, t in trials] or [math.nan] * len(seen)), stopped=stopped,
    )
