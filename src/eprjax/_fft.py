"""The convolutions of the imaging operator, on the FFT library that is fastest where they run.

XLA's CPU FFT runs on one thread (jax#14664), so on a CPU with several cores the imaging
operator's convolutions can go through ducc0's FFT with threads instead (the library that
NumPy's and SciPy's FFTs grew from; with reused buffers it measured 1.4x faster than
`scipy.fft` at 128x512x512 on two cores: docs/performance.md), called from the compiled
program (`buffer_callback`: ducc0 writes into XLA's own result buffers); on GPUs XLA's FFT
(cuFFT) stays (DESIGN.md section 2). The convolution is linear in its signal and its
transpose is the correlation with the same kernel (the conjugate OTF), so `convolve`
carries a custom reverse-mode rule: the signal's cotangent goes through the same host FFTs,
and nothing is differentiated through a callback. The OTF's cotangent (wanted only for
gradients in the PSF) is JAX's own, through XLA's FFT.

Which library runs is decided when a function is traced:

- ``EPRJAX_FFT=xla``: XLA's FFT everywhere;
- ``EPRJAX_FFT=host``: the host FFT wherever the program runs on a CPU;
- ``EPRJAX_FFT=auto`` (the default): the host FFT on CPUs for grids of at least
  `HOST_MIN_VOXELS` voxels when more than one thread is allowed. Below that size the host
  FFT's iterations are faster still, but a program with a callback cannot be kept in JAX's
  persistent compilation cache, and the compilation it then pays on every run outweighs
  what a small restoration's iterations gain (whole commands measured, docs/performance.md).

Where JAX's default backend is not the CPU (a GPU machine) nothing changes. A process with
several CPU devices (``--xla_force_host_platform_device_count``) keeps XLA's FFT: their
callbacks hung (four such devices on two cores, measured), and the devices already share the
cores among segments.

``EPRJAX_FFT_THREADS`` sets the host FFT's threads (read when it runs); by default, the
cores this process may use.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import math
import os
import threading
from collections.abc import Sequence

import ducc0
import jax
import jax.numpy as jnp
import numpy as np

from ._errors import ParameterError

try:  # the host FFT writes straight into XLA's result buffers (no copy of each result)
    from jax.experimental.buffer_callback import buffer_callback
except ImportError:  # a JAX without it: XLA's FFT everywhere (`uses_host_fft`)
    buffer_callback = None

MODES = ("auto", "xla", "host")
HOST_MIN_VOXELS = 2**21  # auto: the host FFT for object grids of this many voxels or more (docs/performance.md:
# whole commands equal at 1.5 million voxels, ducc0 1.2x faster at 3.2 million; 2^22 until the in-place host FFT)
_AXES = (-3, -2, -1)
_SPECTRUM: dict[str, np.ndarray] = {}  # one spectrum buffer per process, used under _LOCK
_LOCK = threading.Lock()


def fft_mode() -> str:
    """``EPRJAX_FFT`` (auto, xla or host), checked."""
    mode = os.environ.get("EPRJAX_FFT", "auto").strip().lower() or "auto"
    if mode not in MODES:
        raise ParameterError(f"EPRJAX_FFT must be one of {', '.join(MODES)}, got {mode!r}")
    return mode


def fft_threads() -> int:
    """The host FFT's threads: ``EPRJAX_FFT_THREADS``, or the cores this process may use."""
    text = os.environ.get("EPRJAX_FFT_THREADS", "").strip()
    if not text:
        return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    try:
        threads = int(text)
    except ValueError:
        threads = 0
    if threads < 1:
        raise ParameterError(f"EPRJAX_FFT_THREADS must be a whole number >= 1, got {text!r}")
    return threads


def _cpu_only_with_one_device() -> bool:
    """Whether JAX runs on the CPU here, as one device. On a machine with a GPU the host FFT
    is never staged out (untested there, and cuFFT is the one to use)."""
    try:
        return jax.default_backend() == "cpu" and len(jax.local_devices(backend="cpu")) == 1
    except RuntimeError:  # no CPU backend: nothing to call back into
        return False


_BATCH = contextvars.ContextVar("eprjax_fft_batch", default=1)


@contextlib.contextmanager
def batched(count: int):
    """While tracing within: the convolutions are mapped over ``count`` volumes at once (a
    batch of segments under vmap, which hides its axis from them), so that `uses_host_fft`
    counts the batch's voxels, as the FFT library sees them. Measured: `epr -sm auto`'s
    tuning (3 segments of 96x105x105, 1.1 million voxels each) took 71-82 s on XLA's FFT and
    43 s on ducc0's (the shared light-sheet stack, 2 cores)."""
    token = _BATCH.set(max(1, int(count)))
    try:
        yield
    finally:
        _BATCH.reset(token)


def uses_host_fft(shape: Sequence[int]) -> bool:
    """Whether a convolution on a grid of ``shape`` goes through the host FFT when it runs on
    a CPU (decided from the environment, see the module's text; in `auto`, the voxels of a
    `batched` trace's whole batch count)."""
    mode = fft_mode()
    if buffer_callback is None or not _cpu_only_with_one_device():
        return False
    if mode == "auto":
        return math.prod(shape) * _BATCH.get() >= HOST_MIN_VOXELS and fft_threads() > 1
    return mode == "host"


def _on_host(shape: Sequence[int], *arrays) -> bool:
    """Whether a transform on a grid of ``shape`` of these arrays runs on the host FFT: where
    it is chosen (`uses_host_fft`) and every array is single precision (see `convolve`)."""
    return uses_host_fft(shape) and all(a.dtype in (jnp.float32, jnp.complex64) for a in arrays)


def forget_traces() -> None:
    """Forget every traced restoration, so that the next call chooses its FFT anew (after
    ``EPRJAX_FFT`` changed in the same process: the choice is made when a function is traced)."""
    from . import _restore, _tune  # noqa: PLC0415  (they import this module)

    jax.clear_caches()
    for built in (_restore._differentiable, _tune._trace_function, _tune._given):
        built.cache_clear()


def describe(shape: Sequence[int], platform: str) -> str:
    """Which FFT a restoration on an object grid of ``shape`` uses on ``platform``, in words."""
    if platform == "cpu" and uses_host_fft(shape):
        return f"ducc0 on {fft_threads()} threads (EPRJAX_FFT={fft_mode()})"
    return f"XLA's (EPRJAX_FFT={fft_mode()})"


def _xla(x, otf, shape, conjugate: bool):
    kernel = jnp.conj(otf) if conjugate else otf
    return jnp.fft.irfftn(jnp.fft.rfftn(x) * kernel, s=shape)


def _buffer(store: dict, shape: tuple[int, ...], dtype) -> np.ndarray:
    """The array kept in ``store`` (made anew when the shape or dtype changes): a fresh array
    of a few hundred MiB costs its page faults on every call (12 % of a convolution at
    128x512x512, measured)."""
    found = store.get("array")
    if found is None or found.shape != shape or found.dtype != dtype:
        store.pop("array", None)  # freed before the new one is made
        found = store["array"] = np.empty(shape, dtype)
    return found


def _host_function(kernel, result, *args, aliases: dict[int, int] | None = None):
    """``kernel(out, *args)`` on NumPy views of XLA's buffers, called from the compiled
    program: it writes its result into ``out`` (XLA's own buffer: no copy afterwards, which
    a `jax.pure_callback` would make of every result: 7 ms of a 17 ms FFT pair at
    64x256x256, measured). Under vmap the kernel gets the batch as leading axes (size 1 for
    an argument that is not batched)."""

    def call(ctx, out, *buffers):
        del ctx
        outs = jax.tree.map(np.asarray, out)
        with _LOCK:  # the spectrum buffer, and ducc0's threads for one call at a time
            kernel(outs, *(np.asarray(b) for b in buffers))

    return buffer_callback(call, result, vmap_method="expand_dims", input_output_aliases=aliases)(*args)


def _spectra(out: np.ndarray, x: np.ndarray, otf: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The spectrum buffer for a result ``out`` (its batch), and where ``x``'s own transform
    goes: the same buffer when x has the result's batch, else an array of x's."""
    batch = out.shape[:-3]
    spectrum = _buffer(_SPECTRUM, batch + otf.shape[-3:], np.result_type(otf.dtype, np.complex64))
    transformed = spectrum if x.shape[:-3] == batch else np.empty(x.shape[:-3] + otf.shape[-3:], spectrum.dtype)
    return spectrum, transformed


def _convolve_kernel(out: np.ndarray, x: np.ndarray, otf: np.ndarray, *, shape: tuple[int, ...], conjugate: bool) -> None:
    """The convolution in NumPy with ducc0's FFTs. For the correlation, the backward real
    transform of a real x is the conjugate of its forward one, so conj(X) otf comes out of
    the same passes, and its transform forward is the backward transform of X conj(otf): no
    pass of its own."""
    threads = fft_threads()
    spectrum, transformed = _spectra(out, x, otf)
    ducc0.fft.r2c(x, axes=_AXES, forward=not conjugate, nthreads=threads, out=transformed)
    np.multiply(transformed, otf, out=spectrum)
    ducc0.fft.c2r(spectrum, axes=_AXES, forward=conjugate, lastsize=shape[-1], inorm=2, nthreads=threads, out=out, allow_overwriting_input=True)


def _host_call(x, otf, shape, conjugate: bool):
    result = jax.ShapeDtypeStruct(jnp.broadcast_shapes(x.shape[:-3], otf.shape[:-3]) + tuple(shape), x.dtype)
    kernel = functools.partial(_convolve_kernel, shape=tuple(shape), conjugate=conjugate)
    return _host_function(kernel, result, x, otf)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def _host(x, otf, shape, conjugate):
    return _host_call(x, otf, shape, conjugate)


def _host_fwd(x, otf, shape, conjugate):
    return _host_call(x, otf, shape, conjugate), (x, otf)


def _host_bwd(shape, conjugate, residuals, cotangent):
    x, otf = residuals
    # the convolution's transpose in x is the correlation with the same kernel (and back):
    # exact for an OTF that is the real FFT of a real kernel, as every OTF here is
    dx = _host_call(cotangent, otf, shape, not conjugate)
    _, pullback = jax.vjp(lambda o: _xla(x, o, shape, conjugate), otf)
    return dx, pullback(cotangent)[0]


_host.defvjp(_host_fwd, _host_bwd)


def convolve(x, otf, shape: Sequence[int], *, conjugate: bool = False):
    """``irfftn(rfftn(x) * otf, s=shape)`` (with ``conjugate``, times ``conj(otf)``: the
    correlation, the convolution's transpose) over the last three axes of ``x``, whose shape
    is ``shape``; ``otf`` the real FFT of a real kernel on that grid. On the host FFT where it
    is chosen (`uses_host_fft`), the program runs on a CPU and the arrays are single
    precision; XLA's FFT elsewhere. (Double precision stays on XLA: JAX turns a callback's
    float64 results into float32 where x64 is enabled by `jax.enable_x64` on the calling
    thread only, as the callback runs on another.)"""
    shape = tuple(int(n) for n in shape)
    if not _on_host(shape, x, otf):
        return _xla(x, otf, shape, conjugate)
    return jax.lax.platform_dependent(
        x, otf,
        cpu=lambda x, otf: _host(x, otf, shape, conjugate),
        default=lambda x, otf: _xla(x, otf, shape, conjugate),
    )


# The padded model's convolutions keep or fill only the data's region of the object grid: H f
# is the convolution cropped to the region, H^T r the correlation of r placed in zeros. A 3-D
# transform is a pass per axis, so the host FFT prunes them: the inverse transform of the
# cropped convolution runs along y only on the region's z planes and along x only on its rows
# within those; the forward transform of the placed r runs along x on r's rows alone and along
# y on its planes alone, the zeros around never transformed (measured in
# docs/performance.md). Each is the other's transpose (crop and place are, and the
# correlation is the convolution's), so each one's reverse-mode rule is the other.

Region = tuple[tuple[int, int], tuple[int, int], tuple[int, int]]  # (start, stop) per axis (z, y, x)


def _region_slices(region: Region) -> tuple[slice, slice, slice]:
    return tuple(slice(a, b) for a, b in region)  # type: ignore[return-value]


def _crop_xla(x, otf, shape, region: Region, conjugate: bool):
    return _xla(x, otf, shape, conjugate)[(..., *_region_slices(region))]


def _place_xla(r, otf, shape, region: Region, conjugate: bool):
    widths = [(0, 0)] * (r.ndim - 3) + [(a, n - b) for (a, b), n in zip(region, shape, strict=True)]
    return _xla(jnp.pad(r, widths), otf, shape, conjugate)


def _crop_kernel(out: np.ndarray, x: np.ndarray, otf: np.ndarray, *, shape: tuple[int, ...], region: Region, conjugate: bool) -> None:
    """The convolution of ``x`` (the whole grid) on the region's z planes and y rows, every x
    column (``out``; the caller keeps the region's columns). As `_convolve_kernel`, with the
    inverse transform's passes one axis at a time, each on what the next keeps."""
    threads = fft_threads()
    (z0, z1), (y0, y1), _ = region
    spectrum, transformed = _spectra(out, x, otf)
    ducc0.fft.r2c(x, axes=_AXES, forward=not conjugate, nthreads=threads, out=transformed)
    np.multiply(transformed, otf, out=spectrum)
    ducc0.fft.c2c(spectrum, axes=(-3,), forward=conjugate, inorm=2, nthreads=threads, out=spectrum)
    planes = spectrum[..., z0:z1, :, :]
    ducc0.fft.c2c(planes, axes=(-2,), forward=conjugate, inorm=2, nthreads=threads, out=planes)
    ducc0.fft.c2r(
        planes[..., y0:y1, :], axes=(-1,), forward=conjugate, lastsize=shape[-1], inorm=2, nthreads=threads, out=out,
        allow_overwriting_input=True,
    )


def _place_kernel(out: np.ndarray, r: np.ndarray, otf: np.ndarray, *, shape: tuple[int, ...], region: Region, conjugate: bool) -> None:
    """The convolution of ``r`` placed in zeros on the whole grid (``out``): r holds the
    region's z planes and y rows, every x column (zero outside the region's: the caller pads
    x). The forward transform's passes one axis at a time, each on what is not zero yet."""
    threads = fft_threads()
    (z0, z1), (y0, y1), _ = region
    spectrum, transformed = _spectra(out, r, otf)
    transformed[..., :z0, :, :] = 0
    transformed[..., z1:, :, :] = 0
    planes = transformed[..., z0:z1, :, :]
    planes[..., :y0, :] = 0
    planes[..., y1:, :] = 0
    ducc0.fft.r2c(r, axes=(-1,), forward=not conjugate, nthreads=threads, out=planes[..., y0:y1, :])
    ducc0.fft.c2c(planes, axes=(-2,), forward=not conjugate, nthreads=threads, out=planes)
    ducc0.fft.c2c(transformed, axes=(-3,), forward=not conjugate, nthreads=threads, out=transformed)
    np.multiply(transformed, otf, out=spectrum)
    ducc0.fft.c2r(spectrum, axes=_AXES, forward=conjugate, lastsize=shape[-1], inorm=2, nthreads=threads, out=out, allow_overwriting_input=True)


def _crop_call(x, otf, shape, region: Region, conjugate: bool):
    (z0, z1), (y0, y1), (x0, x1) = region
    batch = jnp.broadcast_shapes(x.shape[:-3], otf.shape[:-3])
    result = jax.ShapeDtypeStruct((*batch, z1 - z0, y1 - y0, shape[-1]), x.dtype)
    kernel = functools.partial(_crop_kernel, shape=tuple(shape), region=region, conjugate=conjugate)
    return _host_function(kernel, result, x, otf)[..., x0:x1]


def _place_call(r, otf, shape, region: Region, conjugate: bool):
    (x0, x1) = region[2]
    r = jnp.pad(r, [(0, 0)] * (r.ndim - 1) + [(x0, shape[-1] - x1)])
    result = jax.ShapeDtypeStruct(jnp.broadcast_shapes(r.shape[:-3], otf.shape[:-3]) + tuple(shape), r.dtype)
    kernel = functools.partial(_place_kernel, shape=tuple(shape), region=region, conjugate=conjugate)
    return _host_function(kernel, result, r, otf)


def _with_transpose(call, transpose, xla):
    """``call`` (a pruned host convolution) with its reverse-mode rule: in the signal,
    ``transpose`` with the other kernel orientation; in the OTF, JAX's own through ``xla``."""

    @functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4))
    def host(x, otf, shape, region, conjugate):
        return call(x, otf, shape, region, conjugate)

    def fwd(x, otf, shape, region, conjugate):
        return call(x, otf, shape, region, conjugate), (x, otf)

    def bwd(shape, region, conjugate, residuals, cotangent):
        x, otf = residuals
        _, pullback = jax.vjp(lambda o: xla(x, o, shape, region, conjugate), otf)
        return transpose(cotangent, otf, shape, region, not conjugate), pullback(cotangent)[0]

    host.defvjp(fwd, bwd)
    return host


_crop_host = _with_transpose(_crop_call, _place_call, _crop_xla)
_place_host = _with_transpose(_place_call, _crop_call, _place_xla)


def _checked_region(region: Sequence[slice] | Region, shape: tuple[int, ...]) -> Region:
    out = []
    for part, n in zip(region, shape, strict=True):
        a, b = (part.start, part.stop) if isinstance(part, slice) else part
        a, b = int(a), int(b)
        if not 0 <= a < b <= n:
            raise ParameterError(f"a region must lie within the grid {shape}, got {tuple(region)}")
        out.append((a, b))
    return tuple(out)  # type: ignore[return-value]


def _on_region(host, xla, x, otf, shape: tuple[int, ...], region: Region, conjugate: bool):
    """``host`` where the host FFT is chosen and the program runs on a CPU, ``xla`` elsewhere."""
    if not _on_host(shape, x, otf):
        return xla(x, otf, shape, region, conjugate)
    return jax.lax.platform_dependent(
        x, otf,
        cpu=lambda x, otf: host(x, otf, shape, region, conjugate),
        default=lambda x, otf: xla(x, otf, shape, region, conjugate),
    )


def convolve_crop(x, otf, shape: Sequence[int], region: Sequence[slice] | Region, *, conjugate: bool = False):
    """``convolve(x, otf, shape, conjugate=conjugate)`` on ``region`` alone (slices, or (start,
    stop) per axis, of the last three axes), as the padded model's H keeps the data's region;
    on the host FFT (pruned) where `convolve` would be. Its transpose in x is `place_convolve`
    with the conjugate kernel."""
    shape = tuple(int(n) for n in shape)
    return _on_region(_crop_host, _crop_xla, x, otf, shape, _checked_region(region, shape), conjugate)


def place_convolve(r, otf, shape: Sequence[int], region: Sequence[slice] | Region, *, conjugate: bool = False):
    """``convolve`` of ``r`` placed at ``region`` of a grid of zeros of ``shape`` (as the padded
    model's H^T places the data-grid residual, ``conjugate``: correlating); on the host FFT
    (pruned) where `convolve` would be. Its transpose in r is `convolve_crop` with the
    conjugate kernel."""
    shape = tuple(int(n) for n in shape)
    region = _checked_region(region, shape)
    if tuple(r.shape[-3:]) != tuple(b - a for a, b in region):
        raise ParameterError(f"an array of shape {tuple(r.shape[-3:])} cannot be placed at {region}")
    return _on_region(_place_host, _place_xla, r, otf, shape, region, conjugate)


# The solver's preconditioner on the padded grid (see _restore): M r = C^T (inv C r), with C
# the orthonormal 3-D DCT-II of the data grid. C is orthogonal, so M is symmetric: its
# transpose in r is itself. ``inv`` is a constant of the iteration, never differentiated.


# On XLA the filter runs through one real 3-D FFT pair of the data reordered as Makhoul's DCT
# (IEEE Trans. ASSP 28, 1980) orders it along each axis (even samples up, odd ones down); its
# spectrum V and the twiddles W_j(k) = exp(-i pi k / (2 n_j)) give the (half-scaled, DCT-II)
# cosine coefficients
#
#     X(k) = 1/4 Re[ W1 sum_{s2, s3 = +-1} W2^s2 W3^s3 V(k1, s2 k2, s3 k3) ]   (W^-1: conj(W)),
#
# and back, with R_j the reflection k_j -> n_j - k_j (0 where it leaves the grid),
#
#     V(k) = conj(W1 W2 W3) prod_j (1 - i R_j) X(k).
#
# On the real FFT's half spectrum (k3 <= n3 / 2) both need V, and give X, only at
# (+-k1, +-k2, k3) and at n3 - k3 besides k3: every step is elementwise over four reflected
# copies of the half spectrum. Measured (docs/performance.md) 3-5x faster than
# jax.scipy.fft's separable DCTs, which run a complex FFT per axis.


def _twiddle(n: int, axis: int, dtype, count: int | None = None) -> np.ndarray:
    k = np.arange(n if count is None else count)
    shape = [1, 1, 1]
    shape[axis] = k.size
    return np.exp(-1j * np.pi * k / (2 * n)).astype(dtype).reshape(shape)


def _makhoul(n: int) -> np.ndarray:
    return np.concatenate([np.arange(0, n, 2), np.arange(1, n, 2)[::-1]])


def _cosine_xla(x, inv):
    n1, n2, n3 = x.shape[-3:]
    h3 = n3 // 2 + 1
    complex_dtype = np.result_type(np.dtype(x.dtype), np.complex64)
    for axis, n in zip(_AXES, (n1, n2, n3), strict=True):
        x = jnp.take(x, _makhoul(n), axis=axis)
    spectrum = jnp.fft.rfftn(x, axes=_AXES)
    back1, back2 = (-np.arange(n1)) % n1, (-np.arange(n2)) % n2  # -k, modulo n
    flip2 = jnp.take(spectrum, back2, axis=-2)  # V(k1, -k2, k3)
    flip1 = jnp.take(spectrum, back1, axis=-3)  # conj: V(k1, k2, -k3)
    flip12 = jnp.take(flip2, back1, axis=-3)  # conj: V(k1, -k2, -k3)
    w1, w2, w3 = _twiddle(n1, 0, complex_dtype), _twiddle(n2, 1, complex_dtype), _twiddle(n3, 2, complex_dtype, h3)
    p = w2 * w3 * spectrum + np.conj(w2) * w3 * flip2
    q = w2 * np.conj(w3) * jnp.conj(flip12) + np.conj(w2 * w3) * jnp.conj(flip1)
    low = 0.25 * jnp.real(w1 * (p + q))  # X(k1, k2, k3)
    high = -0.25 * jnp.imag(w1 * (p - q))  # X(k1, k2, n3 - k3)
    inv_high = jnp.concatenate([jnp.zeros_like(inv[..., :1]), inv[..., ::-1][..., : h3 - 1]], axis=-1)
    t = jax.lax.complex(inv[..., :h3] * low, -(inv_high * high))  # (1 - i R3) Y, Y = inv X
    # (1 - i R1)(1 - i R2) of that, R_j: the value at -k_j (0 at k_j = 0), by additions alone
    # (a product by -i is exact only where XLA does not fuse it into multiply-adds, which it
    # does by shape; the twiddles' products below still round by shape: a batch and its
    # members may differ in the last bit, see `_stream.restore_into_store`)
    r1 = jnp.where((np.arange(n1) > 0).reshape(-1, 1, 1), jnp.take(t, back1, axis=-3), 0)
    r2 = jnp.where((np.arange(n2) > 0).reshape(-1, 1), jnp.take(t, back2, axis=-2), 0)
    r12 = jnp.where((np.arange(n2) > 0).reshape(-1, 1), jnp.take(r1, back2, axis=-2), 0)
    t = jax.lax.complex(t.real + r1.imag + r2.imag - r12.real, t.imag - r1.real - r2.real - r12.imag)
    x = jnp.fft.irfftn(np.conj(w1 * w2 * w3) * t, s=(n1, n2, n3), axes=_AXES)
    for axis, n in zip(_AXES, (n1, n2, n3), strict=True):
        x = jnp.take(x, np.argsort(_makhoul(n)), axis=axis)
    return x


def _cosine_kernel(out: np.ndarray, x: np.ndarray, inv: np.ndarray) -> None:
    threads = fft_threads()  # unnormalised DCT-II, then DCT-III divided by 2n per axis: the orthonormal pair's filter
    ducc0.fft.dct(x, type=2, axes=_AXES, inorm=0, nthreads=threads, out=out)
    np.multiply(out, inv, out=out)
    ducc0.fft.dct(out, type=3, axes=_AXES, inorm=2, nthreads=threads, out=out)


def _cosine_call(x, inv):
    result = jax.ShapeDtypeStruct(jnp.broadcast_shapes(x.shape, inv.shape), x.dtype)
    return _host_function(_cosine_kernel, result, x, inv)


@jax.custom_vjp
def _cosine_host(x, inv):
    return _cosine_call(x, inv)


def _cosine_host_fwd(x, inv):
    return _cosine_call(x, inv), inv


def _cosine_host_bwd(inv, cotangent):
    return _cosine_call(cotangent, inv), jnp.zeros_like(inv)


_cosine_host.defvjp(_cosine_host_fwd, _cosine_host_bwd)


def cosine_filter(x, inv):
    """``idct(dct(x) * inv)`` over the last three axes (orthonormal DCT-II and its inverse):
    the symmetric filter that is diagonal in the cosine basis (reflecting boundaries). On
    ducc0 where the host FFT is chosen for the grid (`uses_host_fft`), XLA's elsewhere; ``inv``
    is treated as a constant (no gradient)."""
    inv = jax.lax.stop_gradient(inv)
    if not _on_host(x.shape[-3:], x):
        return _cosine_xla(x, inv.astype(x.dtype))
    return jax.lax.platform_dependent(
        x, inv.astype(x.dtype),
        cpu=lambda x, inv: _cosine_host(x, inv),
        default=lambda x, inv: _cosine_xla(x, inv),
    )


# The solver's periodic, unweighted iteration keeps its data-grid vectors as spectra (see
# _restore): one orthonormal real FFT forward, one back, per iteration. Never differentiated
# (the solver's gradients are implicit; the unrolled iteration keeps the real-space path).


def _rfft_kernel(out: np.ndarray, x: np.ndarray) -> None:
    ducc0.fft.r2c(x, axes=_AXES, forward=True, inorm=1, nthreads=fft_threads(), out=out)


def _irfft_kernel(outs: tuple[np.ndarray, np.ndarray], _: np.ndarray, *, last: int) -> None:
    out, spectrum = outs  # the input's own buffer (aliased): ducc0 may work in it
    ducc0.fft.c2r(spectrum, axes=_AXES, forward=False, lastsize=last, inorm=1, nthreads=fft_threads(), out=out, allow_overwriting_input=True)


def rfft3(x):
    """The orthonormal real FFT over the last three axes (``jnp.fft.rfftn(x, norm="ortho")``),
    on ducc0 where the host FFT is chosen for the grid, XLA's elsewhere."""
    shape = tuple(int(n) for n in x.shape[-3:])
    xla = functools.partial(jnp.fft.rfftn, axes=_AXES, norm="ortho")
    if not _on_host(shape, x):
        return xla(x)
    half = jax.ShapeDtypeStruct(x.shape[:-1] + (shape[-1] // 2 + 1,), jnp.complex64)
    return jax.lax.platform_dependent(x, cpu=lambda x: _host_function(_rfft_kernel, half, x), default=xla)


def irfft3(spectrum, shape: Sequence[int]):
    """The inverse of `rfft3` onto a real grid of ``shape`` (the last three axes), on the same
    library as `rfft3` for that grid."""
    shape = tuple(int(n) for n in shape)
    xla = functools.partial(jnp.fft.irfftn, s=shape, axes=_AXES, norm="ortho")
    if not _on_host(shape, spectrum):
        return xla(spectrum)
    results = (jax.ShapeDtypeStruct(spectrum.shape[:-3] + shape, jnp.float32), jax.ShapeDtypeStruct(spectrum.shape, spectrum.dtype))
    kernel = functools.partial(_irfft_kernel, last=shape[-1])
    return jax.lax.platform_dependent(
        spectrum, cpu=lambda s: _host_function(kernel, results, s, aliases={0: 1})[0], default=xla
    )


def parseval_weights(last: int, dtype) -> np.ndarray:
    """Per index of a real FFT's last (halved) axis of length ``last`` // 2 + 1, how often it
    counts in the full spectrum: 1 at 0 (and at last / 2 for an even length), 2 elsewhere, so
    that <x, y> = sum w Re(X conj(Y)) for orthonormal spectra X, Y of real x, y."""
    w = np.full(last // 2 + 1, 2.0)
    w[0] = 1.0
    if last % 2 == 0:
        w[-1] = 1.0
    return w.astype(dtype)
