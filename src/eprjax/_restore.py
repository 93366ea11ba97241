"""The EPR restoration: regularised, non-negative least squares by dual conjugate gradients.

    minimise  Psi(f) = || g - H f ||^2 + alpha s^2 || f ||^2   subject to f >= 0

with H = M (h * .) (see `_operator`) and s = sum(h), so that alpha is a dimensionless
noise-to-signal power ratio. Following Carrington et al. (Science 268, 1995) and the dual of
Butler, Reeds and Dawson (SIAM J. Numer. Anal. 18, 1981), the minimiser is

    f = max(0, H^T c),   c = argmin Phi(c) = 1/2 ||max(0, H^T c)||^2 + lam/2 ||c||^2 - <g, c>

with lam = alpha s^2. Phi is strictly convex and piecewise quadratic on the data grid:

    grad Phi = H f(c) + lam c - g,     Hessian = lam I + H P H^T  (P: where H^T c > 0).

We minimise Phi by nonlinear conjugate gradients (Polak-Ribiere+), with a line search exact for
practical purposes: along a direction d, with u = H^T c and v = H^T d kept on the object
grid, the slope

    phi'(t) = sum max(0, u + t v) v + lam <c + t d, d> - <g, d>

costs no FFT, so Newton steps on it (the first with the current active set; more, bracketed,
when the active set changes along the step) find the minimum, to a slope 1 % of the first
(`LINE_SEARCH_TOLERANCE`). u is updated incrementally and v = H^T d computed, so an
iteration costs two real-FFT pairs: H f for the gradient and H^T of the new direction.
Every `REFRESH` iterations u is recomputed from c, so that float32 round-off cannot
accumulate. On the periodic grid without weights H is a
product in the Fourier basis, and the data-grid vectors (c, the gradient, d, g) are kept as
their orthonormal real FFTs (`_spectral`): H f is then one forward FFT, H^T d one inverse,
the inner products sums over the half spectrum (Parseval), one FFT pair per iteration in all
(measured 1.25-1.6x faster per iteration at 64x256x256 and 128x512x512: docs/performance.md).

Preconditioning (`EPRJAX_PRECONDITION`, default on). The dual's Hessian lam I + H P H^T is,
where the object is dense (P near I), close to lam I + H H^T, which is diagonal in a known
basis: the Fourier basis for the periodic model (exactly), and for the padded model (H H^T
is the PSF's autocorrelation truncated to the data grid, a Toeplitz operator) nearly so in
the cosine basis, whose reflecting boundaries approximate truncation far better than wrap-
around (Ng, Chan and Tang, SIAM J. Sci. Comput. 21, 1999). The direction then comes from
M grad with M = (sigma + lam + mu s^2)^-1 in that basis (sigma: |OTF|^2 there), mu =
`PRECONDITION_SHIFT` damping M where the active set leaves P far from I (sparse objects):
PR+ with M's inner product, the same line search, the same minimiser. It costs one
filter per iteration (a real-FFT pair on the data grid, a product on spectra; a DCT pair
with padding).
Measured (docs/performance.md): dense objects converge in 3-6x fewer iterations, sparse
ones in about as many. Weighted data (W = R^2, Hessian lam I + R H P H^T R) take the same
M: on the shared light-sheet stack weighted by its measured noise (-noise auto) it cut the
iterations from 139 to 57, where R^-1 M R^-1 (the weights' scaling taken out) cut them only
to 127. Not used on finer grids, or when differentiating through the iterations
(``differentiate="unrolled"``).
"""

from __future__ import annotations

import functools
import math
import os
import time
from collections.abc import Callable, Sequence
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Bool, Float, Int

from ._arrays import is_lazy, like, to_jax
from ._errors import EprjaxError, ParameterError
from ._implicit import implicit_gradients
from ._fft import batched, convolve, cosine_filter, irfft3, parseval_weights, rfft3
from ._operator import Grid, Weighted, adjoint, default_pad, factor3, forward, make_grid, power_gain, psf_otf, weighted

REFRESH = 50
GRADIENT_TOLERANCE = 0.1  # the implicit gradients' solve: this times the restoration's tolerance
GRADIENT_ITERATIONS = 1000  # ... in at most this many iterations, or 4 times the restoration's cap
LINE_SEARCH_STEPS = 12
LINE_SEARCH_TOLERANCE = 1e-2  # |phi'(t)| relative to |phi'(0)|: 1e-2 against 1e-3 took as many iterations or fewer on
# nine cases (synthetic beads and texture, periodic and padded, alpha 1e-3 and 1e-4; the shared light-sheet stack) and 2-7 %
# less time, the refine passes spared (docs/performance.md); 3e-2 took 3 % more iterations on beads at alpha 1e-4
PRECONDITION_SHIFT = 1e-2  # mu: M = (sigma + lam + mu s^2)^-1 (measured best of 0, 1e-3, 1e-2, 1e-1: docs/performance.md)
PRECONDITION_ACTIVE = 0.1  # ... while at least this share of the object grid is active (f > 0): dense objects
# stayed above 0.2, sparse beads fell below 0.07 within three iterations (measured, 32x128x128)
PRECONDITION_MODES = ("auto", "none")

CONVERGED, MAX_ITERATIONS, NONFINITE = 0, 1, 2
MESSAGES = {
    CONVERGED: "converged: the relative gradient fell below the tolerance",
    MAX_ITERATIONS: (
        "stopped at the iteration limit before reaching the tolerance; the result is usable, "
        "but more iterations (-it, max_iterations) or a looser tolerance (-co, tol) would settle it"
    ),
    NONFINITE: (
        "the iteration produced NaN or infinite values; check that the data and the PSF are "
        "finite and that alpha is not vanishingly small"
    ),
}

# Called as the iteration goes with (iterations done, relative gradient, dual objective, last
# step, active fraction), NumPy values.
ProgressCallback = Callable[[Any, Any, Any, Any, Any], None]


class History(eqx.Module):
    """Per-iteration record (index 0: the start, c = 0); entries past the last iteration
    are NaN.

    Attributes:
        objective: the dual objective Phi(c); it never rises.
        relative_gradient: ||grad Phi|| / ||g||.
        step: the line search's step length t.
        active_fraction: the fraction of the object grid where f > 0.
    """

    objective: Float[Array, "*batch n"]
    relative_gradient: Float[Array, "*batch n"]
    step: Float[Array, "*batch n"]
    active_fraction: Float[Array, "*batch n"]


class Solution(eqx.Module):
    """What `restore` returns.

    Attributes:
        value: the restored object on the data grid, the caller's kind of array.
        iterations: conjugate-gradient iterations done.
        relative_gradient: ||grad Phi|| / ||g|| at the end.
        converged: whether it fell below the tolerance.
        result: 0 converged, 1 stopped at the iteration limit, 2 non-finite values;
            `message` says it in words.
        alpha: the smoothness used.
        grid: the object grid (padding) used.
        history: per-iteration record, when asked for.
    """

    value: Any
    iterations: Int[Array, "*batch"]
    relative_gradient: Float[Array, "*batch"]
    converged: Bool[Array, "*batch"]
    result: Int[Array, "*batch"]
    alpha: Float[Array, ""]
    grid: Grid = eqx.field(static=True)
    history: History | None = None

    @property
    def message(self) -> str:
        """The result in words (the worst over a batch)."""
        return MESSAGES[int(np.max(np.asarray(self.result)))]


def _sums(*terms):
    """Several sums over the same grid in one pass (one variadic reduction over the last
    axis, then the rows' sums)."""
    zero = jnp.zeros((), terms[0].dtype)
    rows = jax.lax.reduce(
        terms, (zero,) * len(terms), lambda a, b: tuple(x + y for x, y in zip(a, b, strict=True)),
        (terms[0].ndim - 1,),
    )
    return tuple(jnp.sum(r) for r in rows)


def _slope_terms(w, v, *, count: bool = False):
    """sum max(0, w) v and the sum of v^2 where w > 0 (or w = 0 and v > 0: the slope's
    right derivative), over the object grid; ``count``: also the share of it where w > 0,
    in the same pass."""
    # v where w > 0 (or w = 0 and v > 0), squared: written so that no part depends on v
    # alone, which XLA would compute over the grid once before the refine steps' loop (v^2
    # and v > 0: two arrays more to read at every step)
    moving = jnp.where(jnp.where(w == 0, v, w) > 0, v, 0)
    terms = (jnp.where(w > 0, w * v, 0), moving * moving)
    if not count:
        return _sums(*terms)
    first, second, active = _sums(*terms, (w > 0).astype(w.dtype))
    return first, second, active / w.size


def _refine_step(u, v, a, b, t, p, q, p0, *, fixed: bool = False):
    """Bracketed Newton steps on the slope phi'(t) = sum max(0, u + t v) v + a + t b, from
    a first step t (slope p, right derivative q) that was not exact because the active set
    changed along it. Returns the step. ``fixed``: always `LINE_SEARCH_STEPS` steps (those
    after the tolerance is met change nothing), so that reverse-mode differentiation can
    go through them."""
    tiny = jnp.finfo(u.dtype).tiny
    zero = jnp.zeros((), u.dtype)
    lo, hi = jnp.where(p < 0, t, zero), jnp.where(p > 0, t, jnp.asarray(jnp.inf, u.dtype))

    def cond(s):
        j, t, p, q, lo, hi = s
        return (j < LINE_SEARCH_STEPS) & (jnp.abs(p) > LINE_SEARCH_TOLERANCE * jnp.abs(p0))

    def body(s):
        j, t, p, q, lo, hi = s
        newton = t - p / q
        bisect = jnp.where(jnp.isfinite(hi), 0.5 * (lo + hi), 2 * jnp.maximum(t, newton))
        t = jnp.where((newton > lo) & (newton < hi), newton, bisect)
        first, second = _slope_terms(u + t * v, v)
        p, q = first + a + t * b, jnp.maximum(second + b, tiny)
        lo, hi = jnp.where(p < 0, t, lo), jnp.where(p > 0, t, hi)
        return j + 1, t, p, q, lo, hi

    if fixed:
        def masked(_, s):
            return jax.tree.map(lambda new, old: jnp.where(cond(s), new, old), body(s), s)

        return jax.lax.fori_loop(0, LINE_SEARCH_STEPS, masked, (0, t, p, q, lo, hi))[1]
    return jax.lax.while_loop(cond, body, (0, t, p, q, lo, hi))[1]


def precondition_mode() -> str:
    """``EPRJAX_PRECONDITION`` (auto or none), checked; read when a restoration is traced."""
    mode = os.environ.get("EPRJAX_PRECONDITION", "auto").strip().lower() or "auto"
    if mode not in PRECONDITION_MODES:
        raise ParameterError(f"EPRJAX_PRECONDITION must be one of {', '.join(PRECONDITION_MODES)}, got {mode!r}")
    return mode


class _Preconditioner(eqx.Module):
    """M = (sigma + lam + mu s^2)^-1 in the Fourier basis of the (periodic) object grid
    (``inv``: on its real-FFT half spectrum, as an OTF) or in the cosine basis of the data
    grid (padded; ``inv`` on the data grid)."""

    inv: Any
    cosine: bool = eqx.field(static=True)

    def __call__(self, r, grid: Grid):
        if self.cosine:
            return cosine_filter(r, self.inv)
        return convolve(r, self.inv, grid.object_shape)


def _preconditioner(psf, otf, s, lam, grid: Grid) -> _Preconditioner | None:
    """The preconditioner for this grid (see the module text), or None where it is off."""
    if precondition_mode() == "none" or grid.binned:
        return None
    shift = lam + PRECONDITION_SHIFT * s * s
    if grid.periodic:
        return _Preconditioner((1 / (jnp.abs(otf) ** 2 + shift)).astype(otf.dtype), cosine=False)
    return _Preconditioner((1 / (_cosine_power(psf, grid.data_shape) + shift)).astype(lam.dtype), cosine=True)


def _cosine_power(psf, n: Sequence[int]):
    """The PSF autocorrelation's eigenvalues under reflecting boundaries on a grid of shape
    ``n``: |OTF|^2 on a grid twice as large (the PSF placed as `psf_otf` places it, cropped
    to that grid), at the cosine basis' frequencies pi k / n_j, k < n_j. Evaluated as the
    PSF's Fourier sum at those frequencies, one axis at a time (three small products with
    the exponentials): the FFT on the doubled grid that it equals held eight times the
    data's voxels, twice (the shared light-sheet stack's `epr` peaked at 2.17 GB with it,
    1.54 GB without: docs/performance.md)."""
    h = psf
    complex_type = jnp.result_type(psf.dtype, jnp.complex64)  # complex128 for a float64 PSF
    factors = []
    for axis, m in enumerate(n):
        p, c = psf.shape[axis], psf.shape[axis] // 2
        x = np.arange(max(0, c - m), min(p, c + m))  # offsets x - c in [-m, m - 1]: what the doubled grid holds
        h = jax.lax.slice_in_dim(h, int(x[0]), int(x[-1]) + 1, axis=axis)
        factors.append(np.exp(-1j * np.pi * np.outer(x - c, np.arange(m)) / m).astype(complex_type))
    highest = jax.lax.Precision.HIGHEST
    t = jnp.einsum("abc,ck->abk", h.astype(complex_type), factors[2], precision=highest)
    t = jnp.einsum("abk,bj->ajk", t, factors[1], precision=highest)
    t = jnp.einsum("ajk,ai->ijk", t, factors[0], precision=highest)
    return t.real * t.real + t.imag * t.imag


def describe_preconditioner(grid: Grid, weighted: bool = False) -> str:
    """Whether and how a restoration on ``grid`` is preconditioned, in words."""
    mode = precondition_mode()
    if mode == "none" or grid.binned:
        return f"none ({'EPRJAX_PRECONDITION=none' if mode == 'none' else 'a finer grid'})"
    basis = "Fourier" if grid.periodic else "cosine"
    return (
        f"{basis} basis{' (the data weighted)' if weighted else ''} while over {PRECONDITION_ACTIVE:.0%} "
        "of the object is active (EPRJAX_PRECONDITION=auto)"
    )


def _precondition(pre: _Preconditioner | None, r, grid: Grid, spectral: bool = False):
    if pre is None:
        return r
    return pre.inv * r if spectral else pre(r, grid)


SPECTRAL = True  # the periodic, unweighted iteration on spectra (see `_spectral`); False: in real space (for comparison)


def _spectral(op, grid: Grid) -> bool:
    """Whether the iteration keeps its data-grid vectors (c, the gradient, d, g) as their
    orthonormal real FFTs: on the periodic grid without weights, where H is a product there.
    Then H f is a forward FFT and a product, H^T d a product and an inverse FFT, the
    preconditioner a product: two FFTs per iteration instead of four (six preconditioned),
    and the inner products are sums over the half spectrum (Parseval)."""
    return SPECTRAL and grid.periodic and not grid.binned and not isinstance(op, Weighted)


def _for_basis(pre: _Preconditioner | None, spectral: bool) -> _Preconditioner | None:
    """On spectra the periodic preconditioner is a product with its real filter: kept real,
    half the bytes that each iteration reads."""
    return _Preconditioner(jnp.real(pre.inv), cosine=False) if spectral and pre is not None else pre


def _inline(pre: _Preconditioner | None, spectral: bool) -> bool:
    """Whether M is a product applied where the gradient is read (on spectra), so that the
    state keeps the gradient itself rather than z = M grad (`_State.grad`)."""
    return spectral and pre is not None


def _in_basis(x, spectral: bool):
    """A data-grid vector in the iteration's basis."""
    return rfft3(x) if spectral else x


def _real(x, grid: Grid, spectral: bool):
    """A data-grid vector from the iteration's basis back to the data grid."""
    return irfft3(x, grid.data_shape) if spectral else x


def _dots(grid: Grid, spectral: bool, *pairs):
    """The inner products <a, b> of the pairs, in one pass (on spectra: by Parseval)."""
    if not spectral:
        return _sums(*(a * b for a, b in pairs))
    w = parseval_weights(grid.data_shape[-1], pairs[0][0].real.dtype)
    return _sums(*(w * (a.real * b.real + a.imag * b.imag) for a, b in pairs))


def _blur(op, f, grid: Grid, spectral: bool):
    """H f, in the iteration's basis."""
    return op * rfft3(f) if spectral else forward(op, f, grid)


def _back(op, x, grid: Grid, spectral: bool):
    """H^T x, on the object grid, for x in the iteration's basis."""
    return irfft3(jnp.conj(op) * x, grid.object_shape) if spectral else adjoint(op, x, grid)


class _State(eqx.Module):
    """The iteration's state: c and u = H^T c, the preconditioned gradient z = M grad (the
    gradient itself without a preconditioner), the direction d and v = H^T d, and the
    scalars the next line search needs, so that it costs no pass of its own."""

    k: Int[Array, ""]
    c: Float[Array, "z y x"]
    u: Float[Array, "oz oy ox"]
    grad: Float[Array, "z y x"]  # z = M grad: what PR+ needs of this gradient at the next (the gradient
    # itself where M is a product on spectra, `_inline`: M is then applied where it is read, so that
    # neither the gradient nor z has to be kept beside the other)
    d: Float[Array, "z y x"]
    v: Float[Array, "oz oy ox"]
    gg: Float[Array, ""]  # <grad, grad>
    gz: Float[Array, ""]  # <grad, M grad> (gg without a preconditioner)
    gd: Float[Array, ""]  # <grad, d>: the slope phi'(0)
    dd: Float[Array, ""]  # <d, d>
    fv: Float[Array, ""]  # sum max(0, u) v
    vv: Float[Array, ""]  # sum of v^2 where u > 0: the active part of the curvature
    step: Float[Array, ""]  # the last step length
    scale: Float[Array, ""]  # ||g||, the gradient's yardstick
    hist: tuple[Float[Array, " n"], ...]
    pre: _Preconditioner | None = None
    on: Bool[Array, ""] | bool = False  # the preconditioner in use (off for good once the object is sparse)
    active: Float[Array, ""] | float = 1.0  # the share of the object grid where f > 0
    spectral: bool = eqx.field(static=True, default=False)  # c, grad, d as spectra (`_spectral`)

    @property
    def relative_gradient(self):
        return jnp.sqrt(self.gg) / self.scale


def _statistics(state: _State, g, lam, grid: Grid):
    """The dual objective Phi(c) and the active fraction (for reports, not the iteration);
    ``g`` in the state's basis."""
    f = jnp.maximum(state.u, 0)
    ff, active = _sums(f * f, (state.u > 0).astype(f.dtype))
    cc, gc = _dots(grid, state.spectral, (state.c, state.c), (g, state.c))
    return 0.5 * ff + 0.5 * lam * cc - gc, active / f.size


def _start(g, otf, *, grid: Grid, history_length: int, pre: _Preconditioner | None = None, spectral: bool | None = None) -> _State:
    """c = 0: f = 0, the gradient is -g, and the first direction is (preconditioned) steepest
    descent; ``spectral``: the basis (`_spectral`), by default the operator's."""
    dtype = g.dtype
    spectral = _spectral(otf, grid) if spectral is None else spectral
    g, pre = _in_basis(g, spectral), _for_basis(pre, spectral)
    (gg,) = _dots(grid, spectral, (g, g))
    scale = jnp.maximum(jnp.sqrt(gg), jnp.finfo(dtype).tiny)
    u = jnp.zeros(grid.object_shape, dtype)
    z = -_precondition(pre, g, grid, spectral)
    if pre is None:
        gz = zz = gg
    else:  # z = -M g: <g, M g> = -<g, z>
        minus_gz, zz = _dots(grid, spectral, (g, z), (z, z))
        gz = -minus_gz
    v = _back(otf, -z, grid, spectral)
    fv, vv = _slope_terms(u, v)
    zero = jnp.zeros((), dtype)
    hist = tuple(jnp.full((history_length + 1,), jnp.nan, dtype) for _ in range(4))
    if history_length:
        hist = tuple(h.at[0].set(x) for h, x in zip(hist, (zero, jnp.sqrt(gg) / scale, zero, zero), strict=True))
    return _State(
        k=jnp.asarray(0), c=jnp.zeros_like(g), u=u, grad=-g if _inline(pre, spectral) else z, d=-z, v=v, gg=gg,
        gz=gz, gd=-gz, dd=zz, fv=fv, vv=vv, step=zero, scale=scale, hist=hist, pre=pre, on=jnp.asarray(pre is not None),
        active=jnp.ones((), dtype), spectral=spectral,
    )


def _step(s: _State, g, otf, lam, *, grid: Grid, track: bool, fixed: bool = False) -> _State:
    """One iteration (see `_advance`), ``g`` in the state's basis; ``fixed``: a line search
    of fixed length (`_refine_step`)."""
    tiny = jnp.finfo(s.u.dtype).tiny
    sp = s.spectral
    k, c, u, d, v = s.k, s.c, s.u, s.d, s.v
    b = lam * s.dd
    a = s.gd - s.fv  # so that phi'(t) = sum max(0, u + t v) v + a + t b
    p0, q0 = s.gd, jnp.maximum(s.vv + b, tiny)
    t = jnp.where(p0 < 0, -p0 / q0, 0)
    first, second = _slope_terms(u + t * v, v)
    p, q = first + a + t * b, jnp.maximum(second + b, tiny)
    exact = jnp.abs(p) <= LINE_SEARCH_TOLERANCE * jnp.abs(p0)
    t = jax.lax.cond(exact, lambda: t, lambda: _refine_step(u, v, a, b, t, p, q, p0, fixed=fixed))
    c = c + t * d
    u = u + t * v
    f = jnp.maximum(u, 0)
    new = _blur(otf, f, grid, sp) + lam * c - g
    if s.pre is None:
        z = new
        gg, cross, nd = _dots(grid, sp, (new, new), (new, s.grad), (new, d))
        gz, zz, zd = gg, gg, nd
        on = s.on
    else:  # PR+ in M's inner product: z = M grad in place of the gradient, while the object is dense
        on = s.on & (s.active >= PRECONDITION_ACTIVE)
        if sp:  # M a product, applied where read (`_State.grad`): no branch, no array of its own
            m = jnp.where(on, s.pre.inv, jnp.ones((), s.pre.inv.dtype))
            z, old = m * new, m * s.grad
        else:
            z = jax.lax.cond(on, lambda: _precondition(s.pre, new, grid, sp), lambda: new)
            old = s.grad
        gz, cross, nd, gg, zz, zd = _dots(grid, sp, (new, z), (new, old), (new, d), (new, new), (z, z), (z, d))
    beta = jnp.maximum(0, (gz - cross) / jnp.maximum(s.gz, tiny))  # Polak-Ribiere+
    beta = jnp.where((-gz + beta * nd < 0) & (on == s.on), beta, 0)  # not a descent direction, or M left: restart
    d = -z + beta * d
    v = _back(otf, d, grid, sp)  # H^T d itself: one pass fewer than -H^T z + beta v
    if s.pre is None:
        fv, vv = _slope_terms(u, v)
        active = s.active
    else:  # the active share, for the next iteration's choice, in the same pass
        fv, vv, active = _slope_terms(u, v, count=True)
    hist = s.hist
    if track:
        objective, share = _statistics(eqx.tree_at(lambda x: (x.c, x.u), s, (c, u)), g, lam, grid)
        values = (objective, jnp.sqrt(gg) / s.scale, t, share)
        hist = tuple(h.at[k + 1].set(x) for h, x in zip(hist, values, strict=True))
    return _State(
        k=k + 1, c=c, u=u, grad=new if _inline(s.pre, sp) else z, d=d, v=v, gg=gg, gz=gz, gd=-gz + beta * nd,
        dd=zz - 2 * beta * zd + beta * beta * s.dd, fv=fv, vv=vv, step=t, scale=s.scale, hist=hist, pre=s.pre,
        on=on, active=active, spectral=sp,
    )


def _advance(state: _State, g, otf, lam, tol, until, *, grid: Grid, track: bool) -> _State:
    """Iterate until converged, or until ``until`` iterations are done in all.

    Each iteration: the line search (its first Newton step from scalars alone, checked
    in the same pass that moves u; more steps only when the active set changed a lot), then
    the new gradient (one FFT pair) and the new direction with its image v (one FFT pair);
    on spectra (`_spectral`), one FFT each. ``g`` in the state's basis (`_in_basis`).
    """
    body = functools.partial(_step, g=g, otf=otf, lam=lam, grid=grid, track=track)

    def going(s: _State, end):
        rel = s.relative_gradient
        return (s.k < end) & (rel >= tol) & jnp.isfinite(rel)

    def block(s: _State) -> _State:
        # every REFRESH iterations u (and with it the slope terms) comes from c itself, so
        # that round-off in the running update cannot accumulate; outside the inner loop, so
        # that the loop body has no branch to keep XLA from fusing it
        s = jax.lax.cond(
            (s.k > 0) & (s.k % REFRESH == 0),
            lambda s: _refreshed(s, otf, grid),
            lambda s: s,
            s,
        )
        end = jnp.minimum(until, (s.k // REFRESH + 1) * REFRESH)
        return jax.lax.while_loop(lambda s: going(s, end), body, s)

    return jax.lax.while_loop(lambda s: going(s, until), block, state)


def _refreshed(state: _State, otf, grid: Grid) -> _State:
    """The state with u = H^T c recomputed, and the slope terms that depend on it."""
    u = _back(otf, state.c, grid, state.spectral)
    fv, vv = _slope_terms(u, state.v)
    return eqx.tree_at(lambda s: (s.u, s.fv, s.vv), state, (u, fv, vv))


def _finish(state: _State, otf, tol, *, grid: Grid, crop: bool = True):
    """f = max(0, H^T c) from c itself (not the running u), the iterations, the result;
    ``crop``: f on the data's region, else on the whole object grid."""
    rel = state.relative_gradient
    result = jnp.where(~jnp.isfinite(rel), NONFINITE, jnp.where(rel < tol, CONVERGED, MAX_ITERATIONS))
    f = jnp.maximum(_back(otf, state.c, grid, state.spectral), 0)
    if crop:
        f = f[grid.data_slices]
    return f, state.k, rel, result, state.hist


def _prepare(data, psf, alpha, grid: Grid):
    """The OTF, lam = alpha s^2 k (on a grid k (voxels per block) times finer, the
    operator's zero-frequency power gain is s^2 k, so alpha keeps its meaning) and the
    preconditioner (None where it is off)."""
    otf, s = psf_otf(psf, grid)
    lam = (alpha * s * s * power_gain(grid)).astype(data.dtype)
    return otf, lam, _preconditioner(psf, otf, s, lam, grid)


def _warm_start(g, otf, lam, c, *, grid: Grid, pre: _Preconditioner | None = None) -> _State:
    """The iteration started from the dual c (a neighbouring restoration's) instead of 0:
    (preconditioned) steepest descent from there."""
    dtype = g.dtype
    spectral = _spectral(otf, grid)
    g, c, pre = _in_basis(g, spectral), _in_basis(c, spectral), _for_basis(pre, spectral)
    (norm,) = _dots(grid, spectral, (g, g))
    scale = jnp.maximum(jnp.sqrt(norm), jnp.finfo(dtype).tiny)
    u = _back(otf, c, grid, spectral)
    grad = _blur(otf, jnp.maximum(u, 0), grid, spectral) + lam * c - g
    active = jnp.mean((u > 0).astype(dtype))
    on = jnp.asarray(pre is not None) & (active >= PRECONDITION_ACTIVE)
    z = grad if pre is None else jax.lax.cond(on, lambda: _precondition(pre, grad, grid, spectral), lambda: grad)
    gg, gz, zz = _dots(grid, spectral, (grad, grad), (grad, z), (z, z))
    v = _back(otf, -z, grid, spectral)
    fv, vv = _slope_terms(u, v)
    zero = jnp.zeros((), dtype)
    hist = tuple(jnp.full((1,), jnp.nan, dtype) for _ in range(4))
    return _State(
        k=jnp.asarray(0), c=c, u=u, grad=grad if _inline(pre, spectral) else z, d=-z, v=v, gg=gg, gz=gz, gd=-gz,
        dd=zz, fv=fv, vv=vv, step=zero, scale=scale, hist=hist, pre=pre, on=on, active=active, spectral=spectral,
    )


def _whitened(g, otf, root):
    """The weighted problem as a plain one: W^(1/2) g and the operator W^(1/2) H."""
    return (g, otf) if root is None else (root * g, weighted(otf, root))


def _object(g, h, alpha, tol, max_iterations, root=None, *, grid: Grid, history_length: int):
    """One volume restored: f on the whole object grid, iterations, relative gradient,
    result and history; ``root``: the square root of the data term's weights (None: 1)."""
    otf, lam, pre = _prepare(g, h, alpha, grid)
    g, otf = _whitened(g, otf, root)
    state = _start(g, otf, grid=grid, history_length=history_length, pre=pre)
    state = _advance(state, _in_basis(g, state.spectral), otf, lam, tol, max_iterations, grid=grid, track=history_length > 0)
    return _finish(state, otf, tol, grid=grid, crop=False)


@functools.cache
def _differentiable(grid: Grid, history_length: int):
    """`_object` with exact reverse-mode gradients in (data, PSF, alpha) by implicit
    differentiation (`_implicit`): the backward pass is one conjugate-gradient solve."""
    run = functools.partial(_object, grid=grid, history_length=history_length)

    @jax.custom_vjp
    def core(g, h, alpha, tol, max_iterations, root=None):
        return run(g, h, alpha, tol, max_iterations, root)

    def fwd(g, h, alpha, tol, max_iterations, root=None):
        out = run(g, h, alpha, tol, max_iterations, root)
        return out, (g, h, alpha, tol, max_iterations, root, out[0])

    def bwd(residuals, cotangents):
        g, h, alpha, tol, max_iterations, root, f = residuals
        dg, dh, dalpha, droot = implicit_gradients(
            g, h, alpha, f, cotangents[0], root, grid=grid, tol=GRADIENT_TOLERANCE * tol,
            max_iterations=jnp.maximum(GRADIENT_ITERATIONS, 4 * max_iterations),
        )
        return dg, dh, dalpha, None, None, droot

    core.defvjp(fwd, bwd)
    return core


def _unrolled(g, h, alpha, tol, root=None, *, iterations: int, grid: Grid):
    """`_object` as a fixed number of iterations (those after convergence change nothing),
    each checkpointed, with fixed-length line searches: reverse-mode differentiation goes
    through the iterations themselves. For comparison with the implicit gradients; memory
    grows with the iterations (one state per iteration)."""
    otf, lam, _ = _prepare(g, h, alpha, grid)  # no preconditioner: the gradient goes through the iterations
    g, otf = _whitened(g, otf, root)
    state = _start(g, otf, grid=grid, history_length=0, spectral=False)  # the host FFT's transforms have no derivative rules

    @jax.checkpoint
    def one(s, _):
        s = jax.lax.cond((s.k > 0) & (s.k % REFRESH == 0), lambda s: _refreshed(s, otf, grid), lambda s: s, s)
        new = _step(s, g, otf, lam, grid=grid, track=False, fixed=True)
        rel = s.relative_gradient
        going = (rel >= tol) & jnp.isfinite(rel)
        return jax.tree.map(lambda a, b: jnp.where(going, a, b), new, s), None

    state, _ = jax.lax.scan(one, state, None, length=iterations)
    return _finish(state, otf, tol, grid=grid, crop=False)


@functools.partial(jax.jit, static_argnames=("grid", "history_length", "unrolled"))
def _solve(data, psf, alpha, tol, max_iterations, root=None, *, grid: Grid, history_length: int, unrolled: int = 0):
    """The whole restoration, one compiled region; ``unrolled`` > 0: that many iterations,
    differentiated through (`_unrolled`); ``root``: None, or the weights' roots, shaped
    like ``data``."""
    if unrolled:
        run = functools.partial(_unrolled, iterations=unrolled, grid=grid)

        def one(g, root):
            f, k, rel, result, hist = run(g, psf, alpha, tol, root)
            return f[grid.data_slices], k, rel, result, hist
    else:
        core = _differentiable(grid, history_length)

        def one(g, root):
            f, k, rel, result, hist = core(g, psf, alpha, tol, max_iterations, root)
            return f[grid.data_slices], k, rel, result, hist

    return _batched(one, data.ndim, data, root)


def _segments_local(stacked, psf, alpha, tol, max_iterations, roots=None, *, grid: Grid, batch: int):
    """Segments (leading axis) restored ``batch`` at a time: vmap inside lax.map; ``roots``:
    None, or each segment's weights' roots."""
    with batched(min(batch, stacked.shape[0])):
        otf, lam, pre = _prepare(stacked, psf, alpha, grid)

        def one(pair):
            g, op = _whitened(pair[0], otf, pair[1])
            state = _start(g, op, grid=grid, history_length=0, pre=pre)
            state = _advance(state, _in_basis(g, state.spectral), op, lam, tol, max_iterations, grid=grid, track=False)
            f, k, rel, result, _ = _finish(state, op, tol, grid=grid)
            return f, k, rel, result

        return jax.lax.map(one, (stacked, roots), batch_size=batch)


@functools.partial(jax.jit, static_argnames=("grid", "batch", "mesh"))
def _solve_segments(stacked, psf, alpha, tol, max_iterations, roots=None, *, grid: Grid, batch: int, mesh=None):
    """All segments in one compiled region; with a mesh, the segments are spread over its
    devices (shard_map over the segment axis) and every FFT stays on its device."""
    local = functools.partial(_segments_local, grid=grid, batch=batch)
    if mesh is None:
        return local(stacked, psf, alpha, tol, max_iterations, roots)
    spec = jax.sharding.PartitionSpec("segments")
    replicated = jax.sharding.PartitionSpec()
    return jax.shard_map(
        local, mesh=mesh, in_specs=(spec, replicated, replicated, replicated, replicated, None if roots is None else spec),
        out_specs=spec, check_vma=False,
    )(stacked, psf, alpha, tol, max_iterations, roots)


# The same restoration in steps, for progress reports between them (a callback inside the
# compiled loop would keep it out of the persistent compilation cache).


def _batched(function, ndim: int, *args):
    """``function`` mapped over the leading (batch) axes of its arguments; None ones
    (no weights, no start) are passed through."""
    axes = tuple(None if a is None else 0 for a in args)
    for _ in range(ndim - 3):
        function = jax.vmap(function, in_axes=axes)
    volume = next(x for x in jax.tree.leaves(args) if x.ndim == ndim)  # data, or the state's c
    with batched(math.prod(volume.shape[: ndim - 3])):
        return function(*args)


@functools.partial(jax.jit, static_argnames=("grid", "history_length"))
def _solve_start(data, psf, alpha, start=None, root=None, *, grid: Grid, history_length: int):
    """The first state: from c = 0, or (``start``) from a neighbouring restoration's dual;
    ``root``: the weights' roots, shaped like ``data`` (None: unweighted)."""
    otf, lam, pre = _prepare(data, psf, alpha, grid)

    def begin(g, c, root):
        g, op = _whitened(g, otf, root)
        if c is None:
            return _start(g, op, grid=grid, history_length=history_length, pre=pre)
        return _warm_start(g, op, lam, c, grid=grid, pre=pre)

    return _batched(begin, data.ndim, data, start, root), otf, lam


@functools.partial(jax.jit, static_argnames=("grid", "track"), donate_argnames=("state",))
def _solve_advance(state, data, otf, lam, tol, until, root=None, *, grid: Grid, track: bool):
    """Advance to ``until`` iterations; also the objective and active fraction there. The
    state given is used up (its buffers hold the new one: no second copy in memory)."""

    def advance(state, g, root):
        g, op = _whitened(g, otf, root)
        g = _in_basis(g, state.spectral)
        state = _advance(state, g, op, lam, tol, until, grid=grid, track=track)
        return state, _statistics(state, g, lam, grid)

    return _batched(advance, data.ndim, state, data, root)


@functools.partial(jax.jit, static_argnames=("grid", "crop"))
def _solve_finish(state, otf, tol, root=None, *, grid: Grid, crop: bool = True):
    """`_finish`; not ``crop``: f on the whole object grid, and the dual c after the rest."""

    def finish(state, root):
        out = _finish(state, weighted(otf, root), tol, grid=grid, crop=crop)
        return out if crop else (*out, _real(state.c, grid, state.spectral))

    return _batched(finish, state.c.ndim, state, root)


def _solve_reporting(
    data, psf, alpha, tol, max_iterations: int, callback, interval: float | None, *, grid: Grid, history_length: int,
    start=None, crop: bool = True, root=None,
):
    """`_solve`, in chunks of iterations with ``callback`` called after each: every
    iteration, or (``interval`` seconds) as many iterations as take about that long; from
    ``start`` (a dual) when given; not ``crop``: (f on the object grid, ..., the dual c);
    ``root``: the weights' roots (shaped like ``data``), or None."""
    state, otf, lam = _solve_start(data, psf, alpha, start, root, grid=grid, history_length=history_length)
    chunk, done = 1, 0
    while True:
        began = time.perf_counter()
        until = min(done + chunk, max_iterations)
        state, (objective, active) = _solve_advance(
            state, data, otf, lam, tol, jnp.asarray(until), root, grid=grid, track=history_length > 0
        )
        k = int(np.max(np.asarray(state.k)))
        rel = np.max(np.asarray(state.relative_gradient))
        if k > done:
            callback(k, rel, np.asarray(objective), np.asarray(state.step), np.asarray(active))
        if k < until or k >= max_iterations or not np.all(np.isfinite(np.asarray(state.relative_gradient))):
            break  # converged (or broke down) before the chunk's end, or at the cap
        if interval is not None:
            per = (time.perf_counter() - began) / max(k - done, 1)
            chunk = max(1, min(1000, int(interval / max(per, 1e-6))))
        done = k
    return _solve_finish(state, otf, tol, root, grid=grid, crop=crop)


def _float_dtype(*arrays: jax.Array) -> jnp.dtype:
    for x in arrays:
        if jnp.issubdtype(x.dtype, jnp.complexfloating):
            raise ParameterError("complex data or PSF cannot be restored; give real values")
    wanted = jnp.result_type(*(x.dtype for x in arrays), jnp.float32)
    return jnp.dtype(jnp.float64) if wanted == jnp.float64 and jax.config.jax_enable_x64 else jnp.dtype(jnp.float32)


def _concrete(x: Any) -> bool:
    return not isinstance(x, jax.core.Tracer)


def _pad3(pad: int | Sequence[int]) -> tuple[int, int, int]:
    values = (pad,) * 3 if isinstance(pad, (int, np.integer)) else tuple(pad)
    if len(values) != 3 or not all(isinstance(p, (int, np.integer)) for p in values):
        raise ParameterError(f"pad must be an int or (z, y, x) ints, got {pad!r}")
    if any(p < 0 for p in values):
        raise ParameterError(f"pad must be >= 0 voxels, got {pad!r}")
    return tuple(int(p) for p in values)  # type: ignore[return-value]


def _weight_roots(weights: Any, g: jax.Array) -> jax.Array:
    """The square roots of the data term's weights, shaped like ``g``, checked."""
    w = to_jax(weights, "weights").astype(g.dtype)
    if w.shape != g.shape and w.shape != g.shape[-3:]:
        raise ParameterError(f"weights must be shaped like the data {tuple(g.shape)} (or one volume, {tuple(g.shape[-3:])}), got {tuple(w.shape)}")
    if _concrete(w) and not bool(jnp.all(jnp.isfinite(w) & (w >= 0))):
        raise ParameterError("weights must be finite and >= 0")
    if _concrete(w) and not bool(jnp.any(w > 0)):
        raise ParameterError("the weights are zero everywhere: no voxel is left to fit")
    return jnp.broadcast_to(jnp.sqrt(w), g.shape)


def _restore_segmented(data, g, h, alpha, tol, max_iterations, pad, factor, segment, overlap, memory_bytes, *, history, callback, throw, devices, root=None):
    from ._segments import cut, plan_segments, recompose

    if g.ndim != 3 or history or callback is not None:
        raise ParameterError("segments take one (Z, Y, X) volume, without history or callback")
    if not all(_concrete(x) for x in (g, h, alpha)):
        raise ParameterError("segments cannot be restored under a JAX transformation (jit, grad, vmap)")
    plan = plan_segments(
        g.shape, np.asarray(h), segment=None if segment == "auto" else segment, overlap=overlap, pad=pad,
        memory_bytes=memory_bytes, factor=factor,
    )
    grid = make_grid((g.shape[0], *plan.segment), plan.pad, factor)
    f, k, rel, result = solve_segments(
        cut(np.asarray(g), plan), h, alpha, tol, max_iterations, grid=grid, batch=plan.batch, devices=devices,
        weights=None if root is None else cut(np.asarray(root) ** 2, plan),
    )
    value = recompose(f, plan.finer())
    worst = jnp.asarray(np.max(result))
    if throw and int(worst) == NONFINITE:
        raise EprjaxError(MESSAGES[NONFINITE])
    solution = Solution(
        value=like(jnp.asarray(value), data) if not isinstance(data, np.ndarray) else value,
        iterations=jnp.asarray(np.max(k)), relative_gradient=jnp.asarray(np.max(rel)), converged=worst == CONVERGED,
        result=worst, alpha=jnp.asarray(alpha, g.dtype), grid=grid, history=None,
    )
    return solution


def _output_array(out: Any, shape: tuple[int, ...]) -> Any:
    """Where a streamed restoration is summed: zeros in memory (``out`` None), a new Zarr
    array at a path, or the caller's array (checked, then zeroed)."""
    if out is None:
        return np.zeros(shape, np.float32)
    if isinstance(out, (str, os.PathLike)):
        import zarr  # noqa: PLC0415

        chunks = (1,) * (len(shape) - 3) + (shape[-3], min(shape[-2], 256), min(shape[-1], 256))
        try:
            return zarr.open_array(os.fspath(out), mode="w-", shape=shape, chunks=chunks, dtype=np.float32, fill_value=0.0)
        except FileExistsError:
            raise ParameterError(f"out: {out} exists; give a new path (eprjax does not write over it)") from None
        except zarr.errors.ContainsArrayError:
            raise ParameterError(f"out: {out} exists; give a new path (eprjax does not write over it)") from None
        except OSError as e:
            raise ParameterError(f"out: cannot create {out} ({e.strerror or e})") from None
    if not (hasattr(out, "shape") and hasattr(out, "__setitem__")):
        raise ParameterError(f"out must be a path or an array that takes slice assignment (Zarr, h5py, NumPy), got {type(out).__name__}")
    if tuple(out.shape) != tuple(shape):
        raise ParameterError(f"out must be shaped {tuple(shape)} (the restoration's grid), got {tuple(out.shape)}")
    if np.dtype(out.dtype).kind != "f":
        raise ParameterError(f"out must hold floating-point values, got {out.dtype}")
    out[...] = 0
    return out


def _restore_streaming(
    data, psf, alpha, tol, max_iterations, pad, factor, segment, overlap, memory_bytes, *, devices, weights, out, history, callback, throw,
) -> Solution:
    """`restore` of an array read by slicing (or into ``out``): in segments, each read when
    it is restored and summed into the output when done; the volume is never in memory."""
    from ._segments import plan_segments
    from ._stream import Source, restore_streaming

    if history or callback is not None:
        raise ParameterError("a lazy input (or out=) is restored in segments, without history or callback")
    if not all(_concrete(x) for x in (psf, alpha)) or isinstance(data, jax.core.Tracer):
        raise ParameterError("a lazy input (or out=) cannot be restored under a JAX transformation (jit, grad, vmap)")
    source = Source(data if is_lazy(data) else np.asarray(data))
    if len(np.shape(data)) not in (3, 4):
        raise ParameterError(f"data must have axes (Z, Y, X) or (T, Z, Y, X), got shape {tuple(np.shape(data))}")
    h = np.asarray(psf, np.float32)
    if h.ndim != 3:
        raise ParameterError(f"the PSF must have axes (Z, Y, X), got shape {tuple(h.shape)}")
    check_psf(h)
    source.check_finite("the data")
    w = None
    if weights is not None:
        w = Source(weights if is_lazy(weights) else np.asarray(weights))
        if w.shape[1:] != source.shape[1:] or w.count not in (1, source.count):
            raise ParameterError(f"weights must be shaped like the data {tuple(np.shape(data))} (or one volume), got {tuple(np.shape(weights))}")
        w.check_weights()
    k = factor3(factor)
    if memory_bytes is not None:  # what reading the input's chunks holds comes out of the budget
        memory_bytes = max(int(memory_bytes) - source.io_bytes, int(memory_bytes) // 4)
    plan = plan_segments(
        source.shape[1:], h, segment=None if segment in (None, "auto") else segment, overlap=overlap,
        pad=None if pad is None else _pad3(pad), memory_bytes=memory_bytes, factor=k,
    )
    shape = (*np.shape(data)[:-3], *plan.finer().data_shape)
    target = _output_array(out, shape)
    most, largest, worst = restore_streaming(
        source, h, alpha=float(alpha), tol=tol, max_iterations=int(max_iterations), plan=plan, out=target, devices=devices, weights=w,
    )
    if throw and worst == NONFINITE:
        raise EprjaxError(MESSAGES[NONFINITE])
    return Solution(
        value=target, iterations=jnp.asarray(most), relative_gradient=jnp.asarray(largest, jnp.float32),
        converged=jnp.asarray(worst == CONVERGED), result=jnp.asarray(worst), alpha=jnp.asarray(alpha, jnp.float32),
        grid=make_grid((source.shape[1], *plan.segment), plan.pad, k), history=None,
    )


def local_devices(devices: int | None) -> list[jax.Device]:
    """The first ``devices`` of this process's devices (default all), checked."""
    available = jax.local_devices()
    n = len(available) if devices is None else int(devices)
    if not 1 <= n <= len(available):
        raise ParameterError(f"devices must be between 1 and the {len(available)} this process sees, got {devices}")
    return available[:n]


def solve_segments(
    stacked, h, alpha, tol, max_iterations, *, grid: Grid, batch: int, devices: int | None = None, size: int | None = None,
    weights=None,
):
    """Restore a stack of segments (leading axis), ``batch`` at a time on each of ``devices``
    local devices; NumPy (f, iterations, relative gradient, result) per segment. ``size``:
    pad the stack to this many segments (the last repeated, then dropped), so that stacks of
    any length up to it share one compiled function. ``weights``: the data term's weights,
    stacked like the segments, or None."""
    count = len(stacked)
    chosen = local_devices(devices)[: max(1, count, size or 0)]
    n = len(chosen)
    mesh = None
    if n > 1:
        # the same number of segments on every device
        per_device = -(-max(count, size or 0) // n)
        batch = min(batch, per_device)
        total = n * (-(-per_device // batch) * batch)
        mesh = jax.make_mesh((n,), ("segments",), devices=chosen)
    else:
        total = max(count, size or 0)
    roots = None if weights is None else np.sqrt(np.asarray(weights, np.float32))
    if total > count:
        stacked = np.concatenate([stacked, np.repeat(stacked[-1:], total - count, axis=0)])
        if roots is not None:
            roots = np.concatenate([roots, np.repeat(roots[-1:], total - count, axis=0)])

    def place(x):
        if x is None:
            return None
        if mesh is not None:
            return jax.device_put(x, jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("segments")))
        return jnp.asarray(x)  # on the default device

    stacked, roots = place(stacked), place(roots)
    dtype = stacked.dtype
    out = _solve_segments(
        stacked, jnp.asarray(h, dtype), jnp.asarray(alpha, dtype), jnp.asarray(tol, dtype), jnp.asarray(max_iterations),
        None if roots is None else roots.astype(dtype), grid=grid, batch=batch, mesh=mesh,
    )
    return tuple(np.asarray(x)[:count] for x in out)


def check_psf(psf: Any, name: str = "the PSF") -> None:
    """Raise a `ParameterError` unless ``psf`` is finite, non-negative and sums to > 0."""
    h = np.asarray(psf)
    if not np.all(np.isfinite(h)):
        raise ParameterError(f"{name} holds NaN or infinite values")
    if np.any(h < 0):
        raise ParameterError(
            f"{name} has negative values (min {float(h.min()):.3g}); prepare it with preppsf, which removes the background and clips"
        )
    if not h.sum() > 0:
        raise ParameterError(f"{name} sums to zero; it holds no light")


def restore(
    data: Any,
    psf: Any,
    *,
    alpha: float | Float[Array, ""],
    tol: float = 1e-3,
    max_iterations: int = 300,
    pad: int | Sequence[int] | None = None,
    factor: int | Sequence[int] = 1,
    history: bool = False,
    callback: ProgressCallback | None = None,
    callback_interval: float | None = None,
    segment: tuple[int, int] | str | None = None,
    overlap: tuple[int, int] | None = None,
    memory_bytes: int | None = None,
    devices: int | None = None,
    differentiate: str = "implicit",
    throw: bool = True,
    weights: Any = None,
    out: Any = None,
) -> Solution:
    """Restore a 3-D image by EPR: regularised, non-negative least squares (see the restoration page).

    Args:
        data: the image g, axes (Z, Y, X), with optional leading batch axes (e.g. T volumes,
            restored side by side); NumPy, JAX, CuPy or PyTorch. Integers become float32.
        psf: the point spread function h, (Z, Y, X), origin at index shape // 2 (as preppsf
            writes it); finite, non-negative, with a positive sum. Any size: it is cropped or
            padded around its origin to the object grid. Sampled like the object: with a
            ``factor``, on the finer grid (`fine_psf` brings one sampled like the data there).
        alpha: the smoothness (``-sm``), >= 0: a noise-to-signal power ratio, independent of
            how the PSF is normalised. RNL^2 from prepdata is a good first value. May be a
            traced JAX scalar.
        tol: stop when ||grad Phi|| / ||g|| < tol (``-co``; 1e-3 is "90-95 % converged",
            1e-5 is "true convergence").
        max_iterations: the iteration cap (``-it``).
        pad: voxels added on each side of the data, an int or (z, y, x): the object grid on
            which light from outside the field is modelled. None: half the PSF's support
            (rounded up to FFT-friendly sizes); 0: the periodic model on the data grid. In
            voxels of the object's grid.
        factor: restore onto a grid this many times finer than the data's (``super_epr``):
            an int for Y and X (Z kept), or (z, y, x). The model sums each block of fine
            voxels into one data voxel; ``.value`` is ``factor`` times larger along each axis,
            and a block of it sums to what the coarse restoration would give for its voxel.
        history: also return the per-iteration record (`History`).
        callback: for progress reports: called as the iteration goes with (iterations done,
            relative gradient, dual objective, last step, active fraction), NumPy values
            (arrays over a batch). The compiled iteration then runs in chunks, the callback
            called between them; not under a JAX transformation.
        callback_interval: with ``callback``: call it about this often, in seconds (None:
            after every iteration).
        segment: restore in overlapping XY segments of this (y, x) size, full Z, batched, and
            recompose them smoothly (``"auto"``: the size the memory allows; see
            `plan_segments`); each segment gets the padded model and the same alpha.
        overlap: with ``segment``: (y, x) overlap; default the PSF's lateral half-width.
        memory_bytes: with ``segment``: the memory budget (default half the device's).
        devices: with ``segment``: how many local devices share the segments (default all);
            each restores its share, every FFT on its own device.
        differentiate: how `jax.grad` and `jax.vjp` go through the restoration (of any loss
            of ``.value``, in the data, the PSF and alpha): ``"implicit"`` (default): exact
            gradients of the minimiser from its optimality conditions, one conjugate-gradient
            solve, whatever the iterations; ``"unrolled"``: through the iterations
            themselves (always ``max_iterations`` of them, each checkpointed; memory grows
            with them), for comparison. Forward-mode (`jax.jvp`) is not supported.
        throw: raise `EprjaxError` if the iteration broke down (non-finite values).
        weights: the data term's weights W, per data voxel (shaped like ``data``, or one
            (Z, Y, X) volume for every batch member), finite and >= 0: the misfit becomes
            ||W^(1/2) (g - H f)||^2. The inverse noise variance, scaled to a mean of 1
            (`noise_weights`), keeps alpha a noise-to-signal ratio; 0 leaves a voxel out
            (saturated, dead). Differentiable, like the data.
        out: where to put the result instead of memory: a path (a new Zarr array is made
            there) or an array that takes slice assignment (Zarr, h5py, a NumPy memory map),
            shaped like the result, float; it is filled and returned as ``.value``.

    Data on disk or lazy (a Zarr array, a dask array, an h5py dataset, a memory map, an
    OME-Zarr image's pixels from `eprjax.read`), and any data with ``out``, are restored in
    segments (``segment``, default ``"auto"``: as large as ``memory_bytes`` allows, the
    whole volume when it fits), each read from the input when it is restored and summed
    into the result when done: the volume is never held in memory. Such a restoration takes
    no history or callback and is not differentiable.

    Returns:
        A `Solution`; ``.value`` is the restored object on the data grid, float32 (float64
        with x64 enabled and float64 input), the same kind of array as ``data``.

    Example:
        >>> sol = eprjax.restore(image, psf, alpha=5e-4)
        >>> restored = sol.value
        >>> sol.iterations, sol.converged
    """
    if _concrete(alpha):
        a = float(np.asarray(alpha))
        if not (math.isfinite(a) and a >= 0):
            raise ParameterError(f"alpha (smoothness) must be a finite number >= 0, got {alpha!r}")
    if not (isinstance(tol, (int, float)) and 0 < tol < 1):
        raise ParameterError(f"tol (convergence) must be between 0 and 1, got {tol!r}")
    if not (isinstance(max_iterations, (int, np.integer)) and max_iterations >= 1):
        raise ParameterError(f"max_iterations must be an integer >= 1, got {max_iterations!r}")
    if out is not None or is_lazy(data):
        return _restore_streaming(
            data, psf, alpha, tol, max_iterations, pad, factor, segment, overlap, memory_bytes,
            devices=devices, weights=weights, out=out, history=history, callback=callback, throw=throw,
        )
    g = to_jax(data, "data")
    h = to_jax(psf, "psf")
    if g.ndim < 3:
        raise ParameterError(f"data must have axes (Z, Y, X), got shape {tuple(g.shape)}; add a Z axis of length 1 for a plane")
    if h.ndim != 3:
        raise ParameterError(f"the PSF must have axes (Z, Y, X), got shape {tuple(h.shape)}")
    if any(n < 1 for n in (*g.shape, *h.shape)):
        raise ParameterError(f"empty data or PSF: shapes {tuple(g.shape)} and {tuple(h.shape)}")
    dtype = _float_dtype(g, h)
    g, h = g.astype(dtype), h.astype(dtype)
    if _concrete(h):
        check_psf(h)
    if _concrete(g) and not bool(jnp.all(jnp.isfinite(g))):
        raise ParameterError("the data hold NaN or infinite values")
    root = None if weights is None else _weight_roots(weights, g)
    k = factor3(factor)
    fine_shape = tuple(n * f for n, f in zip(g.shape[-3:], k, strict=True))
    if pad is None and not _concrete(h):
        raise ParameterError("give pad explicitly when the PSF is traced (it sets the array shapes)")
    if segment is not None:  # the plan pads its segments (a segment's inner edges need more)
        return _restore_segmented(
            data, g, h, alpha, tol, int(max_iterations), None if pad is None else _pad3(pad), k, segment, overlap, memory_bytes,
            history=history, callback=callback, throw=throw, devices=devices, root=root,
        )
    if pad is None:
        pad = default_pad(np.asarray(h), fine_shape)
    grid = make_grid(g.shape[-3:], _pad3(pad), k)
    alpha_array = jnp.asarray(alpha, dtype)
    history_length = int(max_iterations) if history else 0
    tol_array = jnp.asarray(tol, dtype)
    if differentiate not in ("implicit", "unrolled"):
        raise ParameterError(f"differentiate must be 'implicit' or 'unrolled', got {differentiate!r}")
    unrolled = int(max_iterations) if differentiate == "unrolled" else 0
    if unrolled and (history or callback is not None):
        raise ParameterError("differentiate='unrolled' takes no history or callback")
    if callback is None:
        f, k, rel, result, hist = _solve(
            g, h, alpha_array, tol_array, jnp.asarray(max_iterations), root, grid=grid, history_length=history_length,
            unrolled=unrolled,
        )
    else:
        if not all(_concrete(x) for x in (g, h, alpha_array)):
            raise ParameterError("a callback cannot be used under a JAX transformation (jit, grad, vmap)")
        f, k, rel, result, hist = _solve_reporting(
            g, h, alpha_array, tol_array, int(max_iterations), callback, callback_interval,
            grid=grid, history_length=history_length, root=root,
        )
    solution = Solution(
        value=f,
        iterations=k,
        relative_gradient=rel,
        converged=result == CONVERGED,
        result=result,
        alpha=alpha_array,
        grid=grid,
        history=History(*hist) if history else None,
    )
    if throw and _concrete(result) and bool(jnp.any(result == NONFINITE)):
        raise EprjaxError(MESSAGES[NONFINITE])
    if _concrete(f):
        solution = eqx.tree_at(lambda s: s.value, solution, like(f, data))
    return solution
