"""Gradients through the restoration: implicit (custom_vjp) against central finite
differences in float64, and against differentiation through the unrolled iterations."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import eprjax

from .test_restore import blurred, gaussian_psf, scene

CASES = {
    "padded": dict(shape=(8, 12, 10), pad=(2, 2, 2), factor=1, alpha=1e-2),
    "periodic-odd": dict(shape=(7, 11, 9), pad=0, factor=1, alpha=1e-3),
    "finer-grid": dict(shape=(6, 6, 5), pad=(1, 2, 2), factor=2, alpha=1e-2),
}


def problem(case: str):
    c = CASES[case]
    psf = gaussian_psf((5, 5, 5), (1.2, 1.0, 1.0)).astype(np.float64)
    g = blurred(scene(c["shape"]), psf).astype(np.float64)
    fine = tuple(n * k for n, k in zip(c["shape"], (1, c["factor"], c["factor"]), strict=True))
    target = np.random.default_rng(7).uniform(0, 2 * g.mean(), size=fine)

    def loss(g, h, alpha, how="implicit"):
        f = eprjax.restore(g, h, alpha=alpha, tol=1e-10, max_iterations=5000, pad=c["pad"], factor=c["factor"], differentiate=how).value
        return jnp.sum((f - target) ** 2)

    return g, psf, c["alpha"], loss


def central(fun, x, direction, scale):
    """Central difference of ``fun`` at x along ``direction``, step ``scale``."""
    return (fun(x + scale * direction) - fun(x - scale * direction)) / (2 * scale)


@pytest.mark.parametrize("case", list(CASES))
def test_implicit_gradients_match_finite_differences(case) -> None:
    """Within 1e-4 relative (measured 3e-7 to 4e-6) for alpha, and for random directions in
    the data and the PSF. Steps of 1e-6 relative: truncation error ~1e-12, round-off ~1e-10
    in float64; the restoration converged to 1e-10, so the solver's own error is far below."""
    with jax.enable_x64(True):
        g, h, alpha, loss = problem(case)
        dg, dh, da = jax.grad(loss, argnums=(0, 1, 2))(jnp.asarray(g), jnp.asarray(h), jnp.asarray(alpha))
        assert abs(float(da) - float(central(lambda a: loss(g, h, a), alpha, 1.0, 1e-6 * alpha))) < 1e-4 * abs(float(da))
        rng = np.random.default_rng(1)
        for x, grad, at in ((g, dg, lambda y: loss(y, h, alpha)), (h, dh, lambda y: loss(g, y, alpha))):
            direction = rng.normal(size=x.shape)
            step = 1e-6 * np.linalg.norm(x) / np.linalg.norm(direction)
            want = float(central(at, x, direction, step))
            assert abs(float(np.sum(np.asarray(grad) * direction)) - want) < 1e-4 * abs(want)


@pytest.mark.parametrize("pad", [(2, 2, 2), 0], ids=["padded", "periodic"])
def test_weighted_gradients_match_finite_differences(pad) -> None:
    """The weighted data term: the implicit gradients in alpha, the data, the PSF and the
    weights themselves against central differences (float64), within 1e-4 as above."""
    with jax.enable_x64(True):
        psf = gaussian_psf((5, 5, 5), (1.2, 1.0, 1.0)).astype(np.float64)
        g = blurred(scene((8, 12, 10)), psf).astype(np.float64)
        rng = np.random.default_rng(2)
        weights = rng.uniform(0.2, 3.0, size=g.shape)
        target = rng.uniform(0, 2 * g.mean(), size=g.shape)
        alpha = 1e-2

        def loss(g, h, alpha, w):
            f = eprjax.restore(g, h, alpha=alpha, tol=1e-10, max_iterations=5000, pad=pad, weights=w).value
            return jnp.sum((f - target) ** 2)

        grads = jax.grad(loss, argnums=(0, 1, 2, 3))(jnp.asarray(g), jnp.asarray(psf), jnp.asarray(alpha), jnp.asarray(weights))
        assert abs(float(grads[2]) - float(central(lambda a: loss(g, psf, a, weights), alpha, 1.0, 1e-6 * alpha))) < 1e-4 * abs(float(grads[2]))
        for i, x in ((0, g), (1, psf), (3, weights)):
            def at(y, i=i):
                args = [g, psf, alpha, weights]
                args[i] = y
                return loss(*args)

            direction = rng.normal(size=x.shape)
            step = 1e-6 * np.linalg.norm(x) / np.linalg.norm(direction)
            want = float(central(at, x, direction, step))
            assert abs(float(np.sum(np.asarray(grads[i]) * direction)) - want) < 1e-4 * abs(want), i


@pytest.mark.slow  # 16-30 s; the implicit gradients are checked against finite differences in the default run
def test_unrolled_and_implicit_gradients_agree_once_converged() -> None:
    with jax.enable_x64(True):
        g, h, alpha, loss = problem("padded")
        implicit = jax.grad(loss, argnums=(0, 1, 2))(jnp.asarray(g), jnp.asarray(h), jnp.asarray(alpha))
        unrolled = jax.grad(lambda *a: loss(*a, how="unrolled"), argnums=(0, 1, 2))(jnp.asarray(g), jnp.asarray(h), jnp.asarray(alpha))
        for a, b in zip(implicit, unrolled, strict=True):
            assert np.linalg.norm(np.asarray(a) - np.asarray(b)) < 1e-4 * np.linalg.norm(np.asarray(a))  # measured 3e-5


def test_gradients_in_float32_under_jit_and_vmap() -> None:
    """The default precision: gradients agree with float64's to float32's reach, under jit,
    and for a batch of volumes (vmap inside restore)."""
    psf = gaussian_psf((5, 5, 5), (1.2, 1.0, 1.0))
    g = blurred(scene((8, 12, 10)), psf)
    target = np.full(g.shape, float(g.mean()), np.float32)

    def loss(log_alpha, data):
        f = eprjax.restore(data, psf, alpha=jnp.exp(log_alpha), tol=1e-5, max_iterations=2000, pad=(2, 2, 2)).value
        return jnp.sum((f - target) ** 2)

    single = jax.jit(jax.grad(loss))(jnp.log(1e-2), g)
    with jax.enable_x64(True):
        exact = jax.grad(loss)(jnp.log(1e-2), g.astype(np.float64))
    assert np.isfinite(float(single)) and abs(float(single) - float(exact)) < 1e-2 * abs(float(exact))
    batch = jax.grad(lambda a: loss(a, np.stack([g, g])))(jnp.log(1e-2))
    assert abs(float(batch) - 2 * float(single)) < 1e-3 * abs(float(batch))


def test_optax_tunes_alpha_against_a_reference() -> None:
    """Gradient descent on log alpha (optax) lowers the squared error to the truth."""
    import optax

    psf = gaussian_psf((5, 5, 5), (1.2, 1.0, 1.0))
    truth = scene((8, 16, 16)).astype(np.float32)
    g = blurred(truth, psf, noise=0.05)

    def error(log_alpha):
        f = eprjax.restore(g, psf, alpha=jnp.exp(log_alpha), tol=1e-4, max_iterations=1000, pad=(2, 2, 2)).value
        return jnp.sum((f - truth) ** 2) / jnp.sum(truth**2)

    value_and_grad = jax.jit(jax.value_and_grad(error))
    log_alpha = jnp.log(jnp.asarray(1.0))
    optimiser = optax.adam(0.5)
    state = optimiser.init(log_alpha)
    first, _ = value_and_grad(log_alpha)
    for _ in range(15):
        value, grad = value_and_grad(log_alpha)
        updates, state = optimiser.update(grad, state)
        log_alpha = optax.apply_updates(log_alpha, updates)
    assert float(value) < 0.7 * float(first)


def test_differentiate_is_checked() -> None:
    psf = gaussian_psf((5, 5, 5), (1.2, 1.0, 1.0))
    with pytest.raises(eprjax.ParameterError, match="differentiate"):
        eprjax.restore(np.ones((4, 8, 8), np.float32), psf, alpha=1e-2, differentiate="forward")
