"""The console scripts' first step: load the command line (and with it JAX, which takes a
second or two) so that a Ctrl-C or SIGTERM while it loads ends the program in one line,
status 130, as it does once a command runs. The commands themselves are in `eprjax.cli`."""

from __future__ import annotations

import signal
import sys


_HEARD: list[int] = []


def _heard(signum: int, frame: object) -> None:
    # no exception raised from here: while JAX loads, the handler often runs inside its
    # garbage-collector callback, where an exception would be printed and swallowed
    _HEARD.append(signum)


def _launch(function: str, prog: str) -> None:
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
