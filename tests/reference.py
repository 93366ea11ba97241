"""An independent NumPy solution of the EPR objective, for the tests: accelerated projected
gradient (FISTA, with the constant momentum of strongly convex problems) in float64.

    minimise  ||g - M (h * f)||^2 + alpha s^2 ||f||^2   subject to f >= 0

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


class Model:
    """H = M (h * .) on an object grid of ``object_shape`` with the data at ``offset``."""

    def __init__(self, psf: np.ndarray, data_shape, object_shape, offset) -> None:
        self.data_shape = tuple(data_shape)
        self.object_shape = tuple(object_shape)
        self.crop = tuple(slice(o, o + n) for o, n in zip(offset, data_shape))
        kernel = kernel_on_grid(np.asarray(psf, np.float64), self.object_shape)
        self.otf = np.fft.fftn(kernel)
        self.s = kernel.sum()

    def forward(self, f: np.ndarray) -> np.ndarray:
        return np.real(np.fft.ifftn(np.fft.fftn(f) * self.otf))[self.crop]

    def adjoint(self, r: np.ndarray) -> np.ndarray:
        big = np.zeros(self.object_shape)
        big[self.crop] = r
        return np.real(np.fft.ifftn(np.fft.fftn(big) * np.conj(self.otf)))


def fista(model: Model, g: np.ndarray, alpha: float, *, iterations: int = 100_000, rtol: float = 1e-13) -> np.ndarray:
    """The minimiser, to about ``rtol`` (relative change of f per iteration)."""
    g = np.asarray(g, np.float64)
    lam = alpha * model.s**2
    lipschitz = np.max(np.abs(model.otf)) ** 2 + lam  # of the gradient of Psi / 2
    q = (np.sqrt(lipschitz) - np.sqrt(lam)) / (np.sqrt(lipschitz) + np.sqrt(lam))
    f = np.zeros(model.object_shape)
    y = f.copy()
    for _ in range(iterations):
        grad = model.adjoint(model.forward(y) - g) + lam * y
        new = np.maximum(0.0, y - grad / lipschitz)
        change = np.linalg.norm(new - f) / max(np.linalg.norm(new), 1e-300)
        y = new + q * (new - f)
        f = new
        if change < rtol:
            break
    return f[model.crop]


def objective(model: Model, g: np.ndarray, alpha: float, f_object: np.ndarray) -> float:
    r = g - model.forward(f_object)
    return float(np.sum(r * r) + alpha * model.s**2 * np.sum(f_object * f_object))
