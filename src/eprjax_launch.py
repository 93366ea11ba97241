"""The console scripts' first step: load the command line (and with it JAX, which takes a
second or two) so that a Ctrl-C or SIGTERM while it loads ends the program in one line,
status 130, as it does once a command runs. The commands themselves are in `eprjax.cli`.

Before that, the C library's allocator is told to keep the memory a command frees
(`keep_freed_memory`): the restoration allocates and frees arrays of the volume's size on every
iteration (XLA's FFT's work space, the host FFT's operands), and glibc serves allocations over
32 MiB by mmap and gives them back at once, so that each one is paid again in page faults.
Threads' arenas give theirs back too. Measured on the shared light-sheet stack (a 16M-voxel
grid, 2 cores, `epr` as the tutorial runs it): 10.2 million page faults, a third of the CPU
time in the kernel, 761 ms per iteration, 52.3 s; kept, 0.36 million, 434 ms, 32.3 s
(docs/performance.md). ``EPRJAX_MALLOC=system`` leaves the allocator as it is.
"""

from __future__ import annotations

import os
import signal
import sys

_M_TRIM_THRESHOLD, _M_MMAP_MAX, _M_ARENA_MAX = -1, -4, -8  # mallopt's parameters (glibc's malloc.h)
_TRIM_THRESHOLD = 2**31 - 1  # give back only over 2 GiB free at the heap's top (mallopt takes an int)


def keep_freed_memory() -> bool:
    """Have glibc's malloc serve every size, from every thread, from its one main heap, and
    keep what is freed there for the next allocation (one arena, no mmap per large array,
    trimming only above 2 GiB free), unless ``EPRJAX_MALLOC=system``. (A heap of a thread's
    own arena is unmapped once empty, whatever the trimming threshold; one arena has none.)
    The process's resident memory then stays near its peak until it ends, where a command's
    peak is what counts; explicit trims (`eprjax._stream.release_memory`) still give memory
    back. Returns whether the allocator was changed (False where the C library is not glibc)."""
    if os.environ.get("EPRJAX_MALLOC", "").strip().lower() == "system":
        return False
    try:
        import ctypes  # noqa: PLC0415

        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    settings = ((_M_ARENA_MAX, 1), (_M_MMAP_MAX, 0), (_M_TRIM_THRESHOLD, _TRIM_THRESHOLD))
    return all([bool(mallopt(parameter, value)) for parameter, value in settings])


_HEARD: list[int] = []


def _heard(signum: int, frame: object) -> None:
    # no exception raised from here: while JAX loads, the handler often runs inside its
    # garbage-collector callback, where an exception would be printed and swallowed
    _HEARD.append(signum)


def _launch(function: str, prog: str) -> None:
    keep_freed_memory()
    previous = {s: signal.signal(s, _heard) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        import eprjax.cli as cli  # noqa: PLC0415
    except KeyboardInterrupt:
        _HEARD.append(signal.SIGINT)
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
    if _HEARD:
        print(f"{prog}: error: interrupted while starting", file=sys.stderr, flush=True)
        raise SystemExit(130)
    getattr(cli, function)()


def main() -> None:
    _launch("main", "eprjax")


def epr_main() -> None:
    _launch("epr_main", "epr")


def epr_i2i_main() -> None:
    _launch("epr_i2i_main", "epr_i2i")


def gpu_epr_main() -> None:
    _launch("gpu_epr_main", "gpu_epr")


def super_epr_main() -> None:
    _launch("super_epr_main", "super_epr")


def preppsf_main() -> None:
    _launch("preppsf_main", "preppsf")


def prepdata_main() -> None:
    _launch("prepdata_main", "prepdata")


def mmtoi2i_main() -> None:
    _launch("mmtoi2i_main", "mmtoi2i")
