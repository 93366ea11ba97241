"""A physical model of the widefield PSF: the scalar angular-spectrum (Born & Wolf) model of
an aberration-free objective, in JAX, differentiable in its parameters.

The pupil is the disc |k_r| <= NA / lambda of spatial frequencies; the field at defocus z is
its inverse 2-D Fourier transform with the propagation phase exp(2 pi i z k_z),
k_z = sqrt((n / lambda)^2 - k_r^2); the intensity PSF is |field|^2. Computed on a grid
``oversample`` times finer laterally and summed back over each pixel, so that pixels coarser
than the Nyquist limit (lambda / 4 NA) integrate the light as a camera does.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float

from ._errors import ParameterError


def widefield_psf(
    shape: tuple[int, int, int],
    *,
    na: float,
    n: float,
    wavelength_um: float,
    pixel_size_um: float,
    z_step_um: float,
    offset: tuple[float, float, float] = (0.0, 0.0, 0.0),
    oversample: int = 2,
) -> Float[Array, "z y x"]:
    """The widefield PSF on a (Z, Y, X) grid, centred at index shape // 2 + ``offset``
    (voxels, fractional allowed), normalised to sum 1 over the grid.

    Example:
        >>> h = widefield_psf((32, 64, 64), na=1.2, n=1.33, wavelength_um=0.6,
        ...                   pixel_size_um=0.1, z_step_um=0.2)
    """
    if na >= n:
        raise ParameterError(f"the numerical aperture ({na}) must be smaller than the index ({n})")
    nz, ny, nx = shape
    fine = pixel_size_um / oversample
    my, mx = ny * oversample, nx * oversample
    ky = np.fft.fftfreq(my, d=fine)[:, None]
    kx = np.fft.fftfreq(mx, d=fine)[None, :]
    kr2 = kx**2 + ky**2
    pupil = (kr2 <= (na / wavelength_um) ** 2).astype(np.float64)
    kz = np.sqrt(np.maximum((n / wavelength_um) ** 2 - kr2, 0))
    # the centre: index shape // 2 of the coarse grid, plus the offset, in um
    oz, oy, ox = offset
    y0 = ((ny // 2 + oy) * oversample + (oversample - 1) / 2) * fine
    x0 = ((nx // 2 + ox) * oversample + (oversample - 1) / 2) * fine
    z = (np.arange(nz) - nz // 2 - oz) * z_step_um
    lateral = jnp.exp(-2j * jnp.pi * (jnp.asarray(kx) * x0 + jnp.asarray(ky) * y0))
    field = jnp.fft.ifft2(
        jnp.asarray(pupil) * lateral * jnp.exp(2j * jnp.pi * jnp.asarray(z)[:, None, None] * jnp.asarray(kz))
    )
    intensity = jnp.abs(field) ** 2
    binned = intensity.reshape(nz, ny, oversample, nx, oversample).sum(axis=(2, 4))
    return (binned / jnp.sum(binned)).astype(jnp.float32)
