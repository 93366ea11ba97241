"""Exact gradients of the restoration by implicit differentiation (DESIGN.md section 2).

At the minimiser f of ||g - H f||^2 + lam ||f||^2 over f >= 0, with A the active set (f > 0)
and P its indicator, the optimality conditions are, on A,

    M f = P H^T g,     M = P H^T H P + lam P,

and f = 0 off A. Where the active set does not change under a small perturbation (strict
complementarity: almost everywhere), differentiating them gives, for a loss L(f) with
v = dL/df, w = M^+ P v (one conjugate-gradient solve on A):

    dL/dg   = H w
    dL/dlam = -<w, f>
    dL/dH   : dL = <dH w, g - H f> - <H w, dH f>

with lam = alpha s^2 k (s = sum(h), k the voxels per block on a finer grid). All three come
out of one reverse-mode pass over the scalar

    phi(g, h, alpha) = <H_h w, g> - <H_h w, H_h f> - lam(h, alpha) <w, f>

with w and f held fixed: its gradient is exactly the list above, the PSF's part included
(through the convolution and through s). phi is -<w, F> for the optimality conditions
F = P (H^T (H f - g) + lam f) = 0, so its gradient in any parameter of F is that
parameter's implicit gradient. With weights W in the data term the problem is the plain one
for W^(1/2) g and W^(1/2) H (`_operator.Weighted`): the same solve with that operator, and
phi's gradient in W^(1/2) is the weights' part.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from ._operator import Grid, adjoint, forward, power_gain, psf_otf, weighted

CG_TOLERANCE = {jnp.dtype(jnp.float32): 1e-6, jnp.dtype(jnp.float64): 1e-12}  # relative residual
CG_ITERATIONS = 5000


def _dot(a, b):
    return jnp.sum(a * b)


def active_solve(otf, lam, active, rhs, grid: Grid, *, tol=None, max_iterations: int = CG_ITERATIONS):
    """w with (P H^T H P + lam) w = P rhs, by conjugate gradients from 0 (w stays on the active
    set, where the matrix is symmetric positive definite). Returns w and the iterations."""
    dtype = rhs.dtype
    floor = CG_TOLERANCE.get(jnp.dtype(dtype), 1e-6)
    tol = floor if tol is None else jnp.maximum(floor, tol)
    mask = active.astype(dtype)

    def apply(x):
        return mask * adjoint(otf, forward(otf, mask * x, grid), grid) + lam * x

    b = mask * rhs
    bb = _dot(b, b)
    stop = (tol * tol) * bb

    def cond(state):
        k, _, _, _, rr = state
        return (k < max_iterations) & (rr > stop)

    def body(state):
        k, x, r, p, rr = state
        ap = apply(p)
        step = rr / _dot(p, ap)
        x = x + step * p
        r = r - step * ap
        new = _dot(r, r)
        p = r + (new / rr) * p
        return k + 1, x, r, p, new

    k, x, _, _, _ = jax.lax.while_loop(cond, body, (0, jnp.zeros_like(b), b, b, bb))
    return x, k


def implicit_gradients(g, h, alpha, f, v, root=None, *, grid: Grid, tol=None, max_iterations=CG_ITERATIONS):
    """(dL/dg, dL/dh, dL/dalpha, dL/droot) at the restoration ``f`` (object grid) for the
    cotangent ``v`` (object grid); ``root``: the square root of the data term's weights (data
    grid), or None (unweighted; its gradient is then None). The solve to a relative residual
    of ``tol`` (at least the precision's floor): a tenth of the restoration's own tolerance
    is as far as its f can be trusted."""
    otf, s = psf_otf(h, grid)
    lam = alpha * s * s * power_gain(grid)
    w, _ = active_solve(weighted(otf, root), lam, f > 0, v, grid, tol=tol, max_iterations=max_iterations)
    w, f = jax.lax.stop_gradient(w), jax.lax.stop_gradient(f)

    def phi(g, h, alpha, root):
        otf, s = psf_otf(h, grid)
        lam = alpha * s * s * power_gain(grid)
        op = weighted(otf, root)
        hw = forward(op, w, grid)
        gw = g if root is None else root * g
        return _dot(hw, gw) - _dot(hw, forward(op, f, grid)) - lam * _dot(w, f)

    if root is None:
        return (*jax.grad(phi, argnums=(0, 1, 2))(g, h, alpha, None), None)
    return jax.grad(phi, argnums=(0, 1, 2, 3))(g, h, alpha, root)
