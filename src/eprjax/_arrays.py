"""Arrays at the API boundary: NumPy, JAX, CuPy, PyTorch (anything with DLPack) in, the
caller's kind out, zero-copy on the same device where the libraries allow it."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from ._errors import ParameterError


def _library(x: Any) -> str:
    return type(x).__module__.split(".")[0]


LAZY_LIBRARIES = ("zarr", "dask", "h5py", "xarray", "tensorstore")


def is_lazy(x: Any) -> bool:
    """Whether ``x`` is an array read by slicing, not held in memory: a Zarr array, a dask
    array, an h5py dataset, a memory map, the pixels of an OME-Zarr image."""
    from ._omezarr import LazyArray  # noqa: PLC0415

    return isinstance(x, (np.memmap, LazyArray)) or (_library(x) in LAZY_LIBRARIES and hasattr(x, "shape") and hasattr(x, "__getitem__"))


def to_jax(x: Any, name: str) -> jax.Array:
    """``x`` as a JAX array: JAX arrays as they are, others through DLPack (zero-copy where
    the device and layout allow) or NumPy."""
    if isinstance(x, jax.Array):
        return x
    if isinstance(x, np.ndarray):
        if not x.dtype.isnative:
            x = x.astype(x.dtype.newbyteorder("="))
        return jnp.asarray(x)
    library = _library(x)
    if library == "torch" and getattr(x, "requires_grad", False):
        x = x.detach()
    if hasattr(x, "__dlpack__"):
        try:
            return jax.dlpack.from_dlpack(x)
        except Exception:  # e.g. a non-contiguous tensor, or a device JAX does not see
            pass
    if hasattr(x, "__array__"):
        return jnp.asarray(np.asarray(x))
    raise ParameterError(f"{name}: expected an array (NumPy, JAX, CuPy, PyTorch), got {type(x).__name__}")


def like(y: jax.Array, reference: Any) -> Any:
    """``y`` as the same kind of array as ``reference``."""
    if isinstance(reference, jax.Array):
        return y
    if isinstance(reference, np.ndarray):
        return np.asarray(y)
    library = _library(reference)
    if library == "torch":
        import torch

        return torch.from_dlpack(y)
    if library == "cupy":
        import cupy

        return cupy.from_dlpack(y)
    namespace = getattr(reference, "__array_namespace__", None)
    if namespace is not None:
        return namespace().from_dlpack(y)
    return np.asarray(y)
