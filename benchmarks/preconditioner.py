"""A trial of preconditioning the dual conjugate gradients (issue 16, item 1), outside the
solver: the same Polak-Ribiere+ iteration with its exact line search (the solver's own
helpers), with the direction taken from M^-1 grad instead of grad.

    python benchmarks/preconditioner.py [Z,Y,X]

M^-1 = (|H|^2 + lam / rho)^-1, Fourier-diagonal on the object grid (applied to the dual,
zero-padded onto the object grid and cropped back); ``obj``: rho = 1, exact for the
unconstrained periodic problem; ``rho``: rho = the active fraction of the current iterate
(the share of the object where f > 0, at least 1 %), since the dual's Hessian is
lam + H P H^T. "plain" is the same code without M (it must match eprjax's iteration count:
the check that the trial iteration is the solver's). Objects: sparse beads, and a dense
texture; Gaussian PSF sigma (4, 1.5, 1.5) in 31^3; 1 % Gaussian noise.

Measured (2-core CPU, 24x96x96, tol 1e-3; speed-up of "rho" over eprjax): periodic dense
3.7-4.5x (20-55 iterations for 117-339), periodic beads 0.6-1.1x, padded beads 0.4-0.6x,
padded dense 0.5-0.8x (more iterations than without: the Fourier-diagonal M is far from
the padded operator's crop C pad, whose boundary layer is a large share of the volume). So
this preconditioner wins only on the periodic grid with dense objects, not on the padded
default.
"""

import functools
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import eprjax
from eprjax._operator import (
    forward,
    adjoint,
    psf_otf,
    make_grid,
    default_pad,
    centre_psf,
)
from eprjax._restore import _slope_terms, _refine_step, _sums, LINE_SEARCH_TOLERANCE


def gaussian_psf(shape, sigma):
    axes = [np.arange(n) - n // 2 for n in shape]
    zz, yy, xx = np.meshgrid(*axes, indexing="ij")
    h = np.exp(
        -0.5 * ((zz / sigma[0]) ** 2 + (yy / sigma[1]) ** 2 + (xx / sigma[2]) ** 2)
    )
    return (h / h.sum()).astype(np.float32)


def objects(shape, kind, seed=0):
    rng = np.random.default_rng(seed)
    if kind == "beads":
        f = np.zeros(shape)
        n = int(np.prod(shape) // 3000)
        idx = tuple(rng.integers(0, s, n) for s in shape)
        f[idx] = rng.uniform(50, 200, n)
        return f
    # dense: smooth positive texture
    x = rng.normal(size=shape)
    k = np.fft.fftn(np.fft.ifftshift(gaussian_psf(shape, (2, 4, 4)).astype(np.float64)))
    t = np.real(np.fft.ifftn(np.fft.fftn(x) * k))
    t = np.maximum(t - 0.2 * t.std(), 0)
    return 100 * t / t.max()


@functools.partial(jax.jit, static_argnames=("grid", "pre"))
def solve(g, psf, alpha, tol, maxit, *, grid, pre):
    otf, s = psf_otf(psf, grid)
    lam = alpha * s * s
    power = jnp.abs(otf) ** 2

    def M(r, rho):
        if not pre:
            return r
        inv = 1.0 / (power + lam / (rho if pre == "rho" else 1.0))
        if grid.periodic:
            return jnp.fft.irfftn(jnp.fft.rfftn(r) * inv, s=grid.object_shape)
        return jnp.fft.irfftn(
            jnp.fft.rfftn(jnp.pad(r, grid.pad)) * inv, s=grid.object_shape
        )[grid.data_slices]

    tiny = jnp.finfo(g.dtype).tiny
    scale = jnp.sqrt(jnp.sum(g * g))
    c = jnp.zeros_like(g)
    u = jnp.zeros(grid.object_shape, g.dtype)
    grad = -g
    z = M(grad, 1.0)
    d = -z
    v = adjoint(otf, d, grid)
    gz = jnp.sum(grad * z)
    gg = jnp.sum(grad * grad)
    fv, vv = _slope_terms(u, v)
    st = (0, c, u, z, d, v, gz, gg, -gz, jnp.sum(d * d), fv, vv)

    def cond(st):
        return (st[0] < maxit) & (jnp.sqrt(st[7]) / scale >= tol)

    def body(st):
        k, c, u, z_old, d, v, gz_old, gg_old, gd, dd, fv, vv = st
        b = lam * dd
        a = gd - fv
        p0, q0 = gd, jnp.maximum(vv + b, tiny)
        t = jnp.where(p0 < 0, -p0 / q0, 0)
        first, second = _slope_terms(u + t * v, v)
        p, q = first + a + t * b, jnp.maximum(second + b, tiny)
        exact = jnp.abs(p) <= LINE_SEARCH_TOLERANCE * jnp.abs(p0)
        t = jax.lax.cond(
            exact, lambda: t, lambda: _refine_step(u, v, a, b, t, p, q, p0)
        )
        c = c + t * d
        u = u + t * v
        new = forward(otf, jnp.maximum(u, 0), grid) + lam * c - g
        rho = jnp.maximum(jnp.mean((u > 0).astype(g.dtype)), 0.01)
        z = M(new, rho)
        gz, cross, nd, gg, zz, zd = _sums(
            new * z, new * z_old, new * d, new * new, z * z, z * d
        )
        beta = jnp.maximum(0, (gz - cross) / jnp.maximum(gz_old, tiny))
        beta = jnp.where(-gz + beta * nd < 0, beta, 0)
        w = adjoint(otf, z, grid)
        dd = zz - 2 * beta * zd + beta * beta * dd
        d = -z + beta * d
        v = -w + beta * v
        fv, vv = _slope_terms(u, v)
        return (k + 1, c, u, z, d, v, gz, gg, -gz + beta * nd, dd, fv, vv)

    st = jax.lax.while_loop(cond, body, st)
    f = jnp.maximum(adjoint(otf, st[1], grid), 0)[grid.data_slices]
    return f, st[0], jnp.sqrt(st[7]) / scale


def timed(run):
    """``run()``'s result and its time, the second of two calls (the first compiles)."""
    jax.block_until_ready(run())
    started = time.perf_counter()
    result = jax.block_until_ready(run())
    return result, time.perf_counter() - started


def main():
    shape = tuple(int(x) for x in sys.argv[1].split(",")) if len(sys.argv) > 1 else (32, 128, 128)
    psf = gaussian_psf((31, 31, 31), (4, 1.5, 1.5))
    tol = 1e-3
    for kind in ("beads", "dense"):
        truth = objects(shape, kind)
        g = np.real(np.fft.ifftn(np.fft.fftn(truth) * np.fft.fftn(np.fft.ifftshift(centre_psf(psf, shape)))))
        rng = np.random.default_rng(1)
        g = (g + 0.01 * g.max() * rng.normal(size=shape)).astype(np.float32)
        for padded in (False, True):
            pad = default_pad(psf, shape) if padded else (0, 0, 0)
            grid = make_grid(shape, pad)
            for alpha in (1e-3, 1e-4):
                ref, tr = timed(lambda: eprjax.restore(g, psf, alpha=alpha, tol=tol, max_iterations=3000, pad=pad))
                want = np.asarray(ref.value)
                out = {}
                for pre in (False, "obj", "rho"):
                    args = (jnp.asarray(g), jnp.asarray(psf), jnp.float32(alpha), jnp.float32(tol), 3000)
                    (f, k, _), t = timed(lambda: solve(*args, grid=grid, pre=pre))
                    out[pre] = (int(k), t, float(np.linalg.norm(np.asarray(f) - want) / np.linalg.norm(want)))
                print(
                    kind, "padded" if padded else "periodic", grid.object_shape, f"alpha {alpha:g}",
                    f"tol {tol:g}: eprjax {int(ref.iterations)} it {tr:.2f}s | plain {out[False][0]} it {out[False][1]:.2f}s"
                    f" | obj {out['obj'][0]} it {out['obj'][1]:.2f}s ({tr / out['obj'][1]:.1f}x)"
                    f" | rho {out['rho'][0]} it {out['rho'][1]:.2f}s ({tr / out['rho'][1]:.1f}x) diff {out['rho'][2]:.1e}",
                    flush=True,
                )


if __name__ == "__main__":
    main()
