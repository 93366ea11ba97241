"""The console scripts' first step: load the command line (and with it JAX, which takes a
second or two) so that a Ctrl-C or SIGTERM while it loads ends the program in one line,
status 130, as it does once a command runs. The commands themselves are in `eprjax.cli`.

Before that, glibc's malloc is told to give threads no arenas of their own (one arena), unless
``EPRJAX_MALLOC=system``: a thread's arena unmaps a heap it has emptied, so the arrays that
JAX's and the FFT's threads allocate and free on every iteration were paid again in page
faults each time. It must be said before those threads first allocate (an arena, once a
thread has one, stays); `epr` says the rest where it restores a volume whole
(`eprjax._stream.keep_freed_memory`). Measured on the shared light-sheet stack (`epr` as the
tutorial runs it, 2 cores): 754-786 ms per iteration with glibc's defaults, 555-632 ms with
the rest alone, 464-466 ms with both (docs/performance.md).
"""

from __future__ import annotations

import os
import signal
import sys

M_TRIM_THRESHOLD, M_MMAP_MAX, M_ARENA_MAX = -1, -4, -8  # mallopt's parameters (glibc's malloc.h)


def set_malloc(*settings: tuple[int, int]) -> bool:
    """glibc's ``mallopt(parameter, value)`` for each of ``settings``, unless
    ``EPRJAX_MALLOC=system``; whether all were set (False where the C library is not glibc)."""
    if os.environ.get("EPRJAX_MALLOC", "").strip().lower() == "system":
        return False
    try:
        import ctypes  # noqa: PLC0415

        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return all([bool(mallopt(parameter, value)) for parameter, value in settings])


def one_arena() -> bool:
    """glibc's malloc with one arena for all threads (see the module text)."""
    return set_malloc((M_ARENA_MAX, 1))


_HEARD: list[int] = []


def _heard(signum: int, frame: object) -> None:
    # no exception raised from here: while JAX loads, the handler often runs inside its
    # garbage-collector callback, where an exception would be printed and swallowed
    _HEARD.append(signum)


def _launch(function: str, prog: str) -> None:
    one_arena()
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
