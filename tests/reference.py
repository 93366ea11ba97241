"""An independent NumPy solution of the EPR objective, for the tests: accelerated projected
gradient (FISTA, with the constant momentum of strongly convex problems) in float64.

    minimise  ||g - D_k M (h * f)||^2 + alpha s^2 k ||f||^2   subject to f >= 0

(D_k: the sum over blocks of k fine voxels, for restoration onto a finer grid; k = 1 else)

Written from DESIGN.md alone: it shares no code with eprjax (its own PSF placement, padding,
crop and convolution), so agreement between the two is evidence that both are right.
"""

from __future__ import annotations

import numpy as np


def kernel_on_grid(psf: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """The PSF on a grid of ``shape`` with its origin (index psf.shape // 2) at index 0, the
    rest wrapped around: each voxel put in place one by one."""
    kernel = np.zeros(shape)
    origin = np.array(psf.shape) // 2
    for index in np.ndindex(psf.shape):
        offset = np.array(index) - origin
        if np.all(np.abs(offset) <= np.array(shape) // 2):  # the PSF must fit the grid
            kernel[tuple(offset % np.array(shape))] += psf[index]
    return kernel


def block_sum(x: np.ndarray, factor) -> np.ndarray:
    """Each data voxel the sum of its factor-sized block of fine voxels: the block's
    members added one offset at a time, by strided slicing."""
    out = 0.0
    for offsets in np.ndindex(*factor):
        out = out + x[tuple(slice(o, None, k) for o, k in zip(offsets, factor))]
    return out


def block_spread(r: np.ndarray, factor) -> np.ndarray:
    """The adjoint of `block_sum`: each data voxel's value given to every voxel of its block."""
    out = np.zeros(tuple(n * k for n, k in zip(r.shape, factor)))
    for offsets in np.ndindex(*factor):
        out[tuple(slice(o, None, k) for o, k in zip(offsets, factor))] = r
    return out


class Model:
    """H = D_k M (h * .) on an object grid of ``object_shape`` with the data's region at
    ``offset``; with ``factor`` (z, y, x) the object grid is that many times finer than the
    data, each data voxel the sum of a block of fine ones."""

    def __init__(self, psf: np.ndarray, data_shape, object_shape, offset, factor=(1, 1, 1)) -> None:
        self.factor = tuple(factor)
        self.data_shape = tuple(data_shape)
        self.object_shape = tuple(object_shape)
        fine = tuple(n * k for n, k in zip(data_shape, self.factor))
        self.crop = tuple(slice(o, o + n) for o, n in zip(offset, fine))
        kernel = kernel_on_grid(np.asarray(psf, np.float64), self.object_shape)
        self.otf = np.fft.fftn(kernel)
        self.s = kernel.sum()
        # the operator's zero-frequency power gain, s^2 times the fine voxels per block:
        # alpha multiplies it, so that it stays a noise-to-signal power ratio
        self.gain = self.s**2 * np.prod(self.factor)
        self.norm2 = np.max(np.abs(self.otf)) ** 2 * np.prod(self.factor)  # ||H||^2 bound

    def forward(self, f: np.ndarray) -> np.ndarray:
        return block_sum(np.real(np.fft.ifftn(np.fft.fftn(f) * self.otf))[self.crop], self.factor)

    def adjoint(self, r: np.ndarray) -> np.ndarray:
        big = np.zeros(self.object_shape)
        big[self.crop] = block_spread(r, self.factor)
        return np.real(np.fft.ifftn(np.fft.fftn(big) * np.conj(self.otf)))


def fista(
    model: Model, g: np.ndarray, alpha: float, *, iterations: int = 100_000, rtol: float = 1e-13, weights: np.ndarray | None = None
) -> np.ndarray:
    """The minimiser, to about ``rtol`` (relative change of f per iteration); ``weights``:
    the data term's per-voxel weights W, ||W^(1/2) (g - H f)||^2."""
    g = np.asarray(g, np.float64)
    w = np.ones(g.shape) if weights is None else np.asarray(weights, np.float64)
    lam = alpha * model.gain
    lipschitz = model.norm2 * w.max() + lam  # of the gradient of Psi / 2
    q = (np.sqrt(lipschitz) - np.sqrt(lam)) / (np.sqrt(lipschitz) + np.sqrt(lam))
    f = np.zeros(model.object_shape)
    y = f.copy()
    for _ in range(iterations):
        grad = model.adjoint(w * (model.forward(y) - g)) + lam * y
        new = np.maximum(0.0, y - grad / lipschitz)
        change = np.linalg.norm(new - f) / max(np.linalg.norm(new), 1e-300)
        y = new + q * (new - f)
        f = new
        if change < rtol:
            break
    return f[model.crop]


def objective(model: Model, g: np.ndarray, alpha: float, f_object: np.ndarray) -> float:
    r = g - model.forward(f_object)
    return float(np.sum(r * r) + alpha * model.gain * np.sum(f_object * f_object))
