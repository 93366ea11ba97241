"""A simulated widefield acquisition: a specimen, its image through the microscope, and an
image of a bead for the PSF, as a camera records them (for the demo and the tests)."""

from __future__ import annotations

import dataclasses

import numpy as np

from ._psf_model import widefield_psf

SEED_OPTICS = dict(na=1.4, n=1.515, wavelength_um=0.52, pixel_size_um=0.187, z_step_um=0.25)  # the seed's flags


@dataclasses.dataclass(frozen=True)
class Acquisition:
    """truth: the specimen (photons per voxel, before blur); image and bead: int16 camera
    counts; background: the counts added everywhere."""

    truth: np.ndarray
    image: np.ndarray
    bead: np.ndarray
    background: float


def specimen(shape: tuple[int, int, int], *, z_over_xy: float, seed: int = 3) -> np.ndarray:
    """Beads, a filament and a shell, each a little wider than a pixel."""
    z, y, x = np.meshgrid(*(np.arange(n, dtype=float) for n in shape), indexing="ij")
    zs = (z - shape[0] / 2) * z_over_xy  # z in units of the lateral pixel
    f = np.zeros(shape)
    rng = np.random.default_rng(seed)
    reach = 7  # voxels: beyond, a bead's exp(-r^2 / 2 1.2^2) is below 1e-7 of its peak
    for _ in range(max(4, int(np.prod(shape) // 8000))):
        cz, cy, cx = (rng.uniform(4, n - 4) for n in shape)
        box = tuple(slice(max(0, int(c) - reach), int(c) + reach + 1) for c in (cz, cy, cx))
        f[box] += 1000 * np.exp(-(((z[box] - cz) * z_over_xy) ** 2 + (y[box] - cy) ** 2 + (x[box] - cx) ** 2) / (2 * 1.2**2))
    f += 400 * np.exp(-((y - shape[1] * 0.3 - 0.4 * x) ** 2 + zs**2) / (2 * 1.5**2))
    r = np.sqrt(zs**2 + (y - shape[1] * 0.62) ** 2 + (x - shape[2] * 0.69) ** 2)
    f += 150 * np.exp(-((r - min(shape[1:]) * 0.14) ** 2) / (2 * 1.5**2))
    return f


def simulate(
    shape: tuple[int, int, int] = (24, 64, 64),
    *,
    brightness: float = 20.0,
    background: float = 120.0,
    read_noise: float = 2.0,
    bleaching: float = 0.02,
    bead_photons: float = 2e6,  # the brightest voxel about 25,000 counts: below int16 saturation
    seed: int = 0,
    optics: dict | None = None,
) -> Acquisition:
    """The specimen blurred by the widefield PSF in a field larger than the camera's (light
    from outside comes in), bleached plane by plane, with background, Poisson and read noise;
    and a bead image, its centre off the grid by a fraction of a voxel."""
    optics = dict(SEED_OPTICS if optics is None else optics)
    rng = np.random.default_rng(seed)
    truth = specimen(shape, z_over_xy=optics["z_step_um"] / optics["pixel_size_um"]) * brightness
    margin = (shape[0] // 3, shape[1] // 4, shape[2] // 4)
    big = np.pad(truth, [(m, m) for m in margin])
    h = np.asarray(widefield_psf(big.shape, **optics), np.float64)
    blurred = np.real(np.fft.ifftn(np.fft.fftn(big) * np.fft.fftn(np.fft.ifftshift(h))))
    blurred = blurred[tuple(slice(m, m + n) for m, n in zip(margin, shape, strict=True))]
    fade = np.exp(-bleaching * np.arange(shape[0]))[:, None, None]
    counts = rng.poisson(np.maximum(blurred, 0) * fade + background) + rng.normal(0, read_noise, shape)
    bead_shape = (max(32, shape[0] + 8), 64, 64)
    b = np.asarray(widefield_psf(bead_shape, offset=(0.3, -0.2, 0.35), **optics), np.float64)
    bead = rng.poisson(b * bead_photons + background) + rng.normal(0, read_noise, bead_shape)

    def to_int16(x):
        return np.clip(np.rint(x), 0, 32767).astype(np.int16)

    return Acquisition(truth=truth, image=to_int16(counts), bead=to_int16(bead), background=background)


def field_psf(shape: tuple[int, int, int], *, offset=(0.0, 0.0, 0.0), **optics) -> np.ndarray:
    """The widefield PSF as a camera of ``shape`` sees it: computed on a field twice as wide
    and cut to the middle, so that defocused light leaves the field instead of wrapping
    around; sums to at most 1 (what the wider field holds)."""
    nz, ny, nx = shape
    h = np.asarray(widefield_psf((nz, 2 * ny, 2 * nx), offset=offset, **optics), np.float64)
    return h[:, ny - ny // 2 : 2 * ny - ny // 2, nx - nx // 2 : 2 * nx - nx // 2]


def bead_stack(
    shape: tuple[int, int, int] = (64, 128, 128),
    *,
    optics: dict,
    peak_photons: float = 200.0,
    offset: tuple[float, float, float] = (0.37, -0.21, 0.3),
    background_photons: float = 10.0,
    read_noise: float = 1.5,
    camera_offset: float = 100.0,
    gain: float = 1.0,
    seed: int = 0,
) -> tuple[np.ndarray, float]:
    """A bead acquisition as a camera records it: the PSF (`field_psf`) centred ``offset``
    voxels off the middle voxel, scaled so its brightest voxel holds ``peak_photons``, on a
    background, with Poisson and Gaussian read noise (electrons), times ``gain`` (counts per
    electron), plus the camera's offset (counts). Returns (counts as float32, the photons
    the whole PSF holds)."""
    h = field_psf(shape, offset=offset, **optics)
    photons = peak_photons / h.max()
    rng = np.random.default_rng(seed)
    electrons = rng.poisson(h * photons + background_photons) + rng.normal(0, read_noise, shape)
    return (electrons * gain + camera_offset).astype(np.float32), float(photons)


def _past_the_field(data_shape, psf, *, seed: int, z_over_xy: float) -> tuple[np.ndarray, np.ndarray]:
    """A specimen reaching half the PSF's box past every face of the field, blurred by
    ``psf`` with a linear convolution: (the field's light, the truth within the field)."""
    psf_shape = psf.shape
    margin = tuple(p // 2 for p in psf_shape)
    field = tuple(d + 2 * m for d, m in zip(data_shape, margin, strict=True))
    truth = specimen(field, z_over_xy=z_over_xy, seed=seed)
    full = tuple(f + p for f, p in zip(field, psf_shape, strict=True))
    axes = (0, 1, 2)
    spectrum = np.fft.rfftn(truth, full, axes=axes) * np.fft.rfftn(np.asarray(psf, np.float64), full, axes=axes)
    blurred = np.fft.irfftn(spectrum, full, axes=axes)
    start = tuple(m + p // 2 for m, p in zip(margin, psf_shape, strict=True))
    blurred = blurred[tuple(slice(s, s + d) for s, d in zip(start, data_shape, strict=True))]
    return np.maximum(blurred, 0), truth[tuple(slice(m, m + d) for m, d in zip(margin, data_shape, strict=True))]


def beyond_the_field(
    data_shape: tuple[int, int, int], psf: np.ndarray, *, brightness: float = 20.0, background: float = 100.0, seed: int = 0,
    z_over_xy: float = 1.0,
) -> tuple[np.ndarray, np.ndarray]:
    """A specimen that reaches half the PSF's box past every face of the camera's field,
    blurred by ``psf`` with a linear convolution (nothing wraps around), Poisson noise on a
    ``background`` that is then taken off. Returns (the field's data as float32, the truth
    within the field)."""
    blurred, truth = _past_the_field(data_shape, psf, seed=seed, z_over_xy=z_over_xy)
    rng = np.random.default_rng(seed)
    data = (rng.poisson(blurred * brightness + background) - background).astype(np.float32)
    return data, truth * brightness


@dataclasses.dataclass(frozen=True)
class CameraStack:
    """What `camera_stack` returns: the raw counts, the object in counts (what the data less
    offset and background restore to), and the camera's numbers (gain in electrons per
    count, read noise in electrons, offset and background in counts)."""

    counts: np.ndarray
    truth: np.ndarray
    gain: float
    read_noise: float
    offset: float
    background: float


def camera_stack(
    data_shape: tuple[int, int, int], psf: np.ndarray, *, peak_photons: float, background_photons: float = 5.0,
    gain: float = 0.5, read_noise: float = 1.6, offset: float = 100.0, seed: int = 0, z_over_xy: float = 1.0,
) -> CameraStack:
    """A camera's raw counts of a specimen that reaches past the field (`beyond_the_field`),
    its brightest blurred voxel ``peak_photons``: electrons = Poisson(light + background) +
    Gaussian read noise (electrons RMS), counts = electrons / ``gain`` (electrons per count)
    + ``offset``. The truth is in counts (offset and background excluded), so that the data
    less offset and background, restored, compare with it directly."""
    blurred, truth = _past_the_field(data_shape, psf, seed=seed, z_over_xy=z_over_xy)
    scale = peak_photons / max(float(blurred.max()), 1e-30)
    rng = np.random.default_rng(seed)
    electrons = rng.poisson(blurred * scale + background_photons) + rng.normal(0, read_noise, data_shape)
    counts = (electrons / gain + offset).astype(np.float32)
    return CameraStack(
        counts=counts, truth=truth * scale / gain, gain=gain, read_noise=read_noise, offset=offset,
        background=background_photons / gain,
    )
