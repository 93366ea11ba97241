"""Why sparse objects take the iterations they do: the dual's active set examined five ways.

    python benchmarks/sparse_limits.py [--shape 32,128,128] [--alpha 1e-3] [--tol 1e-3]

Issue 16 asks for time to ``-co`` 1e-3 three times shorter than the filed commit's; sparse beads
on the padded grid stayed at 1.9-2.95x, with about as many iterations as before. On sparse
beads (`preconditioner.py`'s: one per 3000 voxels, Gaussian PSF sigma (4, 1.5, 1.5), 1 % noise)
this measures where the iterations come from:

1. **Warm starts** (default padded grid): iterations to ``--tol`` from the converged dual c*
   (tolerance 1e-6) degraded: scaled by 0.9, averaged over 2 planes in z, with 10 % noise;
   against the cold start (c = 0). If a nearly right start still takes most of the iterations,
   no cheaper first guess (a coarser grid's, a neighbour's) can save them.
2. **The spectrum** (periodic grid): the eigenvalues of the active set's Gram matrix
   G = P H^T H P (P: where the converged f > 0), built from the PSF's autocorrelation; the
   dual's Hessian there is lam + G, so the conjugate gradients' rate follows from
   kappa = (lam + max G) / lam. How many eigenvalues lie far above lam says what a
   preconditioner would have to flatten.
3. **Two grids** (periodic, the active set frozen): linear CG on lam c + H P H^T c = g, plain
   and with a two-grid preconditioner (the low frequencies solved exactly on a coarser grid,
   the active set averaged onto it; lam^-1 on the rest), coarsened along z and along y, x.
   Iterations, and the coarse solve's work in fine iterations.
4. **Block Jacobi in the primal** (periodic, frozen): CG on (lam + G) f = P H^T g, plain and
   with the exact inverse of each connected piece of the active set (26-connected, and after
   dilating it so that a bead's pieces join); iterations until the primal residual falls below
   the tolerance, and until the restoration's own test does (the dual gradient at
   c = (g - H f) / lam, relative to ||g||: the measure the dual iteration of 3 is held to).
5. **The preconditioner's switch-off** (`_restore.PRECONDITION_ACTIVE`, default padded grid):
   iterations to ``--tol`` with the dense preconditioner left on down to other active shares.

All in float64 NumPy except 1 and 5 (eprjax itself). Results and reading: docs/performance.md.
"""

from __future__ import annotations

import argparse
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
import scipy.fft as sf
import scipy.ndimage as ndi

import eprjax
from eprjax import _restore
from eprjax._operator import centre_psf, default_pad, make_grid
from preconditioner import gaussian_psf, image

WORKERS = os.cpu_count() or 1


def rfft(x):
    return sf.rfftn(x, norm="ortho", workers=WORKERS)


def irfft(x, shape):
    return sf.irfftn(x, shape, norm="ortho", workers=WORKERS)


def convolve(x, otf, shape, *, conjugate=False):
    """H x (``conjugate``: H^T x) on the periodic grid ``shape``."""
    return irfft((np.conj(otf) if conjugate else otf) * rfft(x), shape)


def periodic_otf(psf, shape):
    """The PSF's unnormalised real FFT on the periodic grid ``shape``, placed as eprjax places
    it (`centre_psf`), its centre moved to the origin."""
    return sf.rfftn(np.fft.ifftshift(np.asarray(centre_psf(psf, shape), np.float64)))


def cg(apply, rhs, tol, *, precondition=None, done=None, limit=3000):
    """Iterations for (preconditioned) linear CG from 0 to ||r|| < tol ||rhs||, or (``done``)
    until done(x) holds."""
    x, r = np.zeros_like(rhs), rhs.copy()
    z = r if precondition is None else precondition(r)
    d, rz, stop = z.copy(), np.vdot(r, z), tol * np.linalg.norm(rhs)
    for k in range(limit):
        if (np.linalg.norm(r) < stop) if done is None else done(x):
            return x, k
        ad = apply(d)
        t = rz / np.vdot(d, ad)
        x, r = x + t * d, r - t * ad
        z = r if precondition is None else precondition(r)
        rz, last = np.vdot(r, z), rz
        d = z + (rz / last) * d
    return x, limit


def restore_dual(g, psf, alpha, tol, grid, start=None):
    """eprjax's restoration on ``grid``: (f on the object grid, iterations, the dual c)."""
    f, k, _, _, _, c = _restore._solve_reporting(
        jnp.asarray(g), jnp.asarray(psf), jnp.float32(alpha), jnp.float32(tol), 5000, lambda *a: None, 10.0,
        grid=grid, history_length=0, start=None if start is None else jnp.asarray(start, jnp.float32), crop=False,
    )
    return np.asarray(f), int(k), np.asarray(c)


def warm_starts(g, psf, alpha, tol):
    print("\n## 1. Warm starts (default padded grid): iterations to the tolerance\n")
    grid = make_grid(g.shape, default_pad(psf, g.shape), (1, 1, 1))
    f_star, k_star, c_star = restore_dual(g, psf, alpha, 1e-6, grid)
    _, k_cold, _ = restore_dual(g, psf, alpha, tol, grid)
    z = g.shape[0] // 2
    binned = np.repeat(c_star.reshape(z, 2, *g.shape[1:]).mean(axis=1), 2, axis=0)
    noisy = c_star + 0.1 * c_star.std() * np.random.default_rng(1).standard_normal(c_star.shape)
    print(f"converged dual c* (tolerance 1e-6): {k_star} iterations\n")
    print("| start | iterations | relative difference of f from f* |")
    print("|---|---|---|")
    print(f"| c = 0 (cold) | {k_cold} | |")
    for label, start in (("c*", c_star), ("0.9 c*", 0.9 * c_star), ("c* averaged over 2 z planes", binned),
                         ("c* + 10 % noise", noisy)):
        f, k, _ = restore_dual(g, psf, alpha, tol, grid, start=start)
        print(f"| {label} | {k} | {np.linalg.norm(f - f_star) / np.linalg.norm(f_star):.1e} |", flush=True)


def spectrum(active, acf, lam):
    print("\n## 2. The active set's Gram spectrum (periodic grid)\n")
    where = np.argwhere(active)
    offsets = (where[:, None, :] - where[None, :, :]) % np.array(active.shape)
    gram = acf[offsets[..., 0], offsets[..., 1], offsets[..., 2]]
    del offsets
    began = time.perf_counter()
    values = np.linalg.eigvalsh(gram)
    kappa = (lam + values[-1]) / lam
    rate = (np.sqrt(kappa) - 1) / (np.sqrt(kappa) + 1)
    print(f"{len(values)} active voxels ({active.mean():.1%}); largest eigenvalue {values[-1]:.3g}, lam {lam:.3g}: "
          f"kappa {kappa:.0f}, CG's bound {rate:.3f} per iteration ({time.perf_counter() - began:.0f} s)\n")
    levels = (0.1, 0.03, 0.01, 3e-3, 1e-3, 3e-4)
    print("| eigenvalues above | " + " | ".join(f"{q:g}" for q in levels) + " |")
    print("|---" * (len(levels) + 1) + "|")
    print("| count | " + " | ".join(str(int(np.sum(values > q))) for q in levels) + " |")
    return gram


def two_grids(g, active, otf, lam, tol):
    print("\n## 3. Two grids: linear CG on the frozen active set (periodic)\n")
    shape = g.shape
    half = (shape[0], shape[1], shape[2] // 2 + 1)
    mask = active.astype(np.float64)

    def hessian(c):
        return lam * c + convolve(mask * convolve(c, otf, shape, conjugate=True), otf, shape)

    _, plain = cg(hessian, g, tol)
    print("| coarsened (z, y, x) | outer iterations | coarse iterations per outer | work in fine iterations |")
    print("|---|---|---|---|")
    print(f"| none (plain CG) | {plain} | | {plain} |")
    for factor in ((2, 1, 1), (4, 1, 1), (1, 2, 2), (2, 2, 2)):
        coarse = tuple(n // b for n, b in zip(shape, factor, strict=True))
        rows = [np.r_[0 : c // 2, n - c // 2 : n] for c, n in zip(coarse[:2], shape[:2], strict=True)]
        low = np.ix_(rows[0], rows[1], np.arange(coarse[2] // 2 + 1))

        def restrict(x, low=low, coarse=coarse):
            return irfft(rfft(x)[low], coarse)

        def prolong(y, low=low):
            out = np.zeros(half, complex)
            out[low] = rfft(y)
            return irfft(out, shape)

        otf_c = otf[low]
        share = mask.reshape(coarse[0], factor[0], coarse[1], factor[1], coarse[2], factor[2]).mean(axis=(1, 3, 5))
        counts: list[int] = []

        def coarse_hessian(y, otf_c=otf_c, share=share, coarse=coarse):
            return lam * y + convolve(share * convolve(y, otf_c, coarse, conjugate=True), otf_c, coarse)

        def precondition(r, coarse_hessian=coarse_hessian, restrict=restrict, prolong=prolong, counts=counts):
            y = restrict(r)
            solved, k = cg(coarse_hessian, y, 1e-8)
            counts.append(k)
            return (r - prolong(y)) / lam + prolong(solved)

        _, outer = cg(hessian, g, tol, precondition=precondition)
        inner = float(np.mean(counts))
        work = outer + outer * inner / float(np.prod(factor))
        print(f"| {factor} | {outer} | {inner:.0f} | {work:.0f} |", flush=True)


def block_jacobi(g, active, otf, gram, lam, tol):
    print("\n## 4. Block Jacobi in the primal: CG on (lam + G) f = P H^T g (periodic, frozen)\n")
    shape = g.shape
    system = gram + lam * np.eye(len(gram))
    rhs = convolve(g, otf, shape, conjugate=True)[active]

    def dual_done(x):  # the restoration's own test: c = (g - H f) / lam, ||H max(0, H^T c) + lam c - g|| < tol ||g||
        f = np.zeros(shape)
        f[active] = x
        c = (g - convolve(f, otf, shape)) / lam
        gradient = convolve(np.maximum(convolve(c, otf, shape, conjugate=True), 0), otf, shape) + lam * c - g
        return np.linalg.norm(gradient) < tol * np.linalg.norm(g)

    def iterations(precondition=None):
        return tuple(cg(lambda x: system @ x, rhs, tol, precondition=precondition, done=done)[1] for done in (None, dual_done))

    print("| blocks | count | largest | median | iterations: primal residual < tol | ... dual gradient < tol |")
    print("|---|---|---|---|---|---|")
    print("| none | | | | {} | {} |".format(*iterations()))
    for label, grow in (("26-connected pieces", None), ("pieces joined by dilating (2, 1, 1) voxels", (2, 1)),
                        ("pieces joined by dilating (4, 2, 2) voxels", (4, 2))):
        if grow is None:
            labels, _ = ndi.label(active, structure=np.ones((3, 3, 3), bool))
        else:
            labels, _ = ndi.label(ndi.binary_dilation(active, np.ones((2 * grow[0] + 1,) + (2 * grow[1] + 1,) * 2, bool)))
        of_active = labels[active]
        blocks = [np.flatnonzero(of_active == i) for i in np.unique(of_active)]
        inverses = [np.linalg.inv(system[np.ix_(b, b)]) for b in blocks]

        def precondition(r, blocks=blocks, inverses=inverses):
            out = np.empty_like(r)
            for b, inverse in zip(blocks, inverses, strict=True):
                out[b] = inverse @ r[b]
            return out

        sizes = np.array([len(b) for b in blocks])
        print(f"| {label} | {len(blocks)} | {sizes.max()} | {np.median(sizes):.0f} | " + "{} | {} |".format(
            *iterations(precondition)), flush=True)


def switch_off(g, psf, alpha, tol):
    print("\n## 5. The dense preconditioner switched off at other active shares (default padded grid)\n")
    print("| PRECONDITION_ACTIVE | iterations |")
    print("|---|---|")
    default = _restore.PRECONDITION_ACTIVE
    try:
        for share in (0.2, default, 0.05, 0.0):
            _restore.PRECONDITION_ACTIVE = share
            jax.clear_caches()
            k = int(eprjax.restore(g, psf, alpha=alpha, tol=tol, max_iterations=5000, throw=False).iterations)
            print(f"| {share:g}{' (default)' if share == default else ''} | {k} |", flush=True)
    finally:
        _restore.PRECONDITION_ACTIVE = default
        jax.clear_caches()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", default="32,128,128")
    parser.add_argument("--alpha", type=float, default=1e-3)
    parser.add_argument("--tol", type=float, default=1e-3)
    args = parser.parse_args()
    shape = tuple(int(x) for x in args.shape.split(","))
    if len(shape) != 3 or shape[0] % 4 or shape[1] % 2 or shape[2] % 2:
        raise SystemExit("--shape: three sizes, z a multiple of 4 and y, x even (the coarse grids halve them)")
    psf = gaussian_psf((31, 31, 31), (4, 1.5, 1.5))
    g = image(shape, "beads", psf)
    print(f"Sparse beads {'x'.join(map(str, shape))}, alpha {args.alpha:g}, tolerance {args.tol:g}; "
          f"{jax.devices()[0].platform}, {os.cpu_count()} cores, load {os.getloadavg()[0]:.2f}")
    warm_starts(g, psf, args.alpha, args.tol)
    f = np.asarray(eprjax.restore(g, psf, alpha=args.alpha, tol=1e-6, max_iterations=5000, pad=0).value)
    active = f > 0
    otf = periodic_otf(psf, shape)
    lam = args.alpha * float(psf.sum(dtype=np.float64)) ** 2
    acf = sf.irfftn(np.abs(otf) ** 2, shape)
    gram = spectrum(active, acf, lam)
    two_grids(g.astype(np.float64), active, otf, lam, args.tol)
    block_jacobi(g.astype(np.float64), active, otf, gram, lam, args.tol)
    del gram
    switch_off(g, psf, args.alpha, args.tol)


if __name__ == "__main__":
    main()
