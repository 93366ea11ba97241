"""The noise-weighted data term against the unweighted one and Richardson-Lucy, and the
automatic alpha without camera numbers, on simulated camera stacks.

    python benchmarks/weighted.py [--peaks 30,300,3000] [--seeds 1] [--shape 32,96,96] [--out table.md]

Each case: a widefield specimen (the demo's beads, filament and shell) reaching past the
field on every face, blurred by the seed's optics (NA 1.4, 0.187 um pixels, 0.25 um planes)
with a linear convolution, Poisson light over 3 photons of background, Gaussian read noise
1.6 electrons, 0.5 electrons per count, an offset of 100 counts (`_simulate.camera_stack`).
The restorations see the counts less the offset and the background.

- unweighted / weighted: EPR at every alpha of a dense sweep (17 values, 1e-6 to 1), NRMSE
  to the truth; the weights are 1 / variance from the noise model measured on the raw
  counts (`estimate_noise`), scaled to a mean of 1.
- Richardson-Lucy: on the same grid (the same padding), in electrons with the read noise's
  variance added to data and model (the usual Poisson-Gaussian shift), the true background
  given; its NRMSE at every iteration up to 300, the best taken.
- auto: `tune_alpha` with the discrepancy criterion and the measured noise (no camera
  numbers), weighted and not; its NRMSE and its cost: the tuning's time over one
  restoration's at the chosen alpha, both compiled (the tuning run twice, the second timed).
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np

import eprjax
from eprjax._operator import adjoint, default_pad, forward, make_grid, psf_otf
from eprjax._simulate import SEED_OPTICS, camera_stack

ALPHAS = np.logspace(-6, 0, 17)
RL_ITERATIONS = 300


def nrmse(f, truth) -> float:  # as the peers were measured in ANCHORS.md: after the best scalar fit
    f = np.asarray(f, np.float64)
    scale = float(np.sum(f * truth) / max(np.sum(f * f), 1e-300))
    return float(np.linalg.norm(scale * f - truth) / np.linalg.norm(truth))


def richardson_lucy(electrons, psf, background, read, truth_e, grid):
    """Best NRMSE (and its iteration) of RL on ``grid``: f <- f H^T(d / (H f + b)) / H^T 1,
    d = electrons + read^2, b = background + read^2 (both clipped at a small positive)."""
    otf, _ = psf_otf(jnp.asarray(psf), grid)
    d = jnp.maximum(jnp.asarray(electrons + read**2), 1e-3)
    b = background + read**2
    norm = adjoint(otf, jnp.ones_like(d), grid)
    inside = grid.data_slices

    @jax.jit
    def run(f):
        def body(f, _):
            ratio = d / jnp.maximum(forward(otf, f, grid) + b, 1e-6)
            f = f * adjoint(otf, ratio, grid) / jnp.maximum(norm, 1e-6)
            error = jnp.linalg.norm(f[inside] - truth_e) / jnp.linalg.norm(truth_e)
            return f, error

        return jax.lax.scan(body, f, None, length=RL_ITERATIONS)[1]

    start = jnp.full(grid.object_shape, jnp.maximum(jnp.mean(d) - b, 1e-3) / float(np.sum(psf)), jnp.float32)
    errors = np.asarray(run(start))
    best = int(np.argmin(errors))
    return float(errors[best]), best + 1  # (plain NRMSE; RL keeps the flux, so its scalar fit changes it by < 1 %)


def case(peak: float, seed: int, shape, psf):
    st = camera_stack(shape, psf, peak_photons=peak, background_photons=3.0, seed=seed, z_over_xy=SEED_OPTICS["z_step_um"] / SEED_OPTICS["pixel_size_um"])
    data = (st.counts - st.offset - st.background).astype(np.float32)
    model = eprjax.estimate_noise(st.counts)
    weights = eprjax.noise_weights(model.voxel_variance(st.counts))
    pad = default_pad(psf, shape)
    grid = make_grid(shape, pad)
    row = {"peak": peak, "seed": seed, "gain": model.gain / st.gain - 1, "read": model.read_noise(st.offset) / st.read_noise - 1}
    for name, w in (("unweighted", None), ("weighted", weights)):
        errors = []
        for a in ALPHAS:
            sol = eprjax.restore(data, psf, alpha=float(a), pad=pad, weights=w)
            errors.append(nrmse(sol.value, st.truth))
        i = int(np.argmin(errors))
        row[name] = (float(ALPHAS[i]), errors[i])
        variance = model.voxel_variance(st.counts)
        tune = lambda: eprjax.tune_alpha(data, psf, noise_variance=variance, pad=pad, weights=w)  # noqa: E731
        tune()
        began = time.perf_counter()
        tuning = tune()
        seconds = time.perf_counter() - began
        np.asarray(eprjax.restore(data, psf, alpha=tuning.alpha, pad=pad, weights=w).value)
        began = time.perf_counter()
        chosen = eprjax.restore(data, psf, alpha=tuning.alpha, pad=pad, weights=w)
        np.asarray(chosen.value)
        one = time.perf_counter() - began
        row[name + " auto"] = (tuning.alpha, nrmse(chosen.value, st.truth), seconds / one, tuning.evaluations)
    electrons = (st.counts - st.offset) * st.gain
    row["rl"] = richardson_lucy(electrons, psf, 3.0, st.read_noise, st.truth * st.gain, grid)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--peaks", default="30,300,3000")
    parser.add_argument("--seeds", default="1")
    parser.add_argument("--shape", default="32,96,96")
    parser.add_argument("--out")
    args = parser.parse_args()
    shape = tuple(int(n) for n in args.shape.split(","))
    psf = np.asarray(eprjax.widefield_psf((24, 48, 48), **SEED_OPTICS), np.float32)
    rows = [
        "| peak photons | noise measured: gain, read noise (error) | unweighted best: alpha, NRMSE | weighted best: alpha, NRMSE | Richardson-Lucy best: NRMSE, iterations | auto unweighted: alpha, NRMSE (vs best), cost | auto weighted: alpha, NRMSE (vs best), cost |",
        "|---|---|---|---|---|---|---|",
    ]
    for seed in (int(s) for s in args.seeds.split(",")):
        for peak in (float(p) for p in args.peaks.split(",")):
            r = case(peak, seed, shape, psf)
            u, w, rl = r["unweighted"], r["weighted"], r["rl"]
            au, aw = r["unweighted auto"], r["weighted auto"]
            rows.append(
                f"| {peak:g} | {r['gain']:+.1%}, {r['read']:+.1%} | {u[0]:.2g}, {u[1]:.4f} | {w[0]:.2g}, {w[1]:.4f} | {rl[0]:.4f}, {rl[1]} | "
                f"{au[0]:.3g}, {au[1]:.4f} ({au[1] / u[1] - 1:+.1%}), {au[2]:.1f}x ({au[3]} trials) | "
                f"{aw[0]:.3g}, {aw[1]:.4f} ({aw[1] / w[1] - 1:+.1%}), {aw[2]:.1f}x ({aw[3]} trials) |"
            )
            print(rows[-1], flush=True)
    text = "\n".join(rows) + f"\n\n({'x'.join(map(str, shape))} voxels, {jax.devices()[0].platform}, JAX {jax.__version__})\n"
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text)


if __name__ == "__main__":
    main()
