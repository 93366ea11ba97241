"""The frame every command stands in.

- Flags are spelled as the original programs spell them: one dash, case-sensitive, several
  letters (``-psf``, ``-NA``, ``-sm``, ``-bg_ref 5 5 3``); a long form and its short alias are
  one option (``-smoothness``/``-sm``). Flags may come before or after the file names.
- Every command has ``-V`` (verbose: what is done, with progress), ``-D`` (debug: details,
  and a traceback on error) and ``-h``/``--help``.
- Errors are one line on standard error, ``prog: error: <what and where>``, and a non-zero
  exit status: 2 for a usage mistake (unknown flag, bad value, missing argument), 1 for a
  problem with the data or files, 130 after Ctrl-C.
- Outputs are never written over an input, and are written whole or not at all (the library's
  `eprjax.write` sees to the second).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import inspect
import logging
import math
import os
import re
import shlex
import signal
import sys
import threading
import time
import traceback
import typing
from collections.abc import Callable, Sequence
from difflib import get_close_matches
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import typer
import typer.core

try:  # typer >= 0.20 carries its own copy of click
    from typer._click import exceptions as click_exceptions
except ImportError:  # pragma: no cover - older typer on the real click
    from click import exceptions as click_exceptions  # type: ignore[no-redef]

import eprjax
from eprjax._io import CANCEL, file_format

HELP_OPTIONS = ["-h", "--help"]
CONTEXT = {"help_option_names": HELP_OPTIONS, "max_content_width": 100}

Verbose = Annotated[bool, typer.Option("-V", help="Verbose: report what is done, with progress.")]
Debug = Annotated[bool, typer.Option("-D", help="Debug: log details; on an error, show the traceback.")]

log = logging.getLogger("eprjax")


@dataclasses.dataclass
class _Run:
    """What the command being run was called with (for history lines and error reports)."""

    prog: str = "eprjax"
    argv: tuple[str, ...] = ()
    verbose: bool = False
    debug: bool = False


RUN = _Run()


class _Interrupted(Exception):
    """Ctrl-C or SIGTERM inside a command."""


def history_line() -> str:
    """The history line for this run: ``* <command> <arguments as given>``."""
    return "* " + " ".join([RUN.prog, *(shlex.quote(a) for a in RUN.argv)])


# -- flags ----------------------------------------------------------------------------------

_NUMBER = re.compile(r"^-(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?$")


class Command(typer.core.TyperCommand):
    """A typer command that reads ``-smooth`` as an unknown flag named ``-smooth`` (click
    would read it as ``-s mooth``), since no original program bundles short flags."""

    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:
        takes: dict[str, int] = {name: 0 for name in HELP_OPTIONS}
        for param in self.params:
            if isinstance(param, typer.core.TyperOption):
                n = 0 if (param.is_flag or param.count) else param.nargs
                takes.update({name: n for name in (*param.opts, *param.secondary_opts)})
        i = 0
        while i < len(args):
            arg = args[i]
            if arg == "--":
                break
            name = arg.split("=", 1)[0] if arg.startswith("-") else arg
            if name in takes:
                i += 1 if "=" in arg else 1 + takes[name]
                continue
            if arg.startswith("-") and len(arg) > 1 and not _NUMBER.match(arg):
                flags = {n.lower(): n for n in takes if n not in HELP_OPTIONS}
                close = [flags[n] for n in get_close_matches(name.lower(), flags, n=3, cutoff=0.6)]
                hint = f" (did you mean {' or '.join(close)}?)" if close else ""
                if name.lower() in flags:
                    hint = f" (flags are case-sensitive: did you mean {flags[name.lower()]}?)"
                raise click_exceptions.UsageError(f"unknown flag {name}{hint}", ctx=ctx)
            i += 1
        return super().parse_args(ctx, args)


def new_app(name: str, help: str) -> typer.Typer:
    return typer.Typer(
        name=name,
        help=help,
        context_settings=CONTEXT,
        add_completion=False,
        no_args_is_help=True,
        pretty_exceptions_enable=False,
        rich_markup_mode=None,
    )


def command(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Give ``fn`` the common ``-V`` and ``-D`` flags and the logging they switch on; the
    result is registered with `register` (on the umbrella and on its own script)."""
    hints = typing.get_type_hints(fn, include_extras=True)
    signature = inspect.signature(fn)
    params = [p.replace(annotation=hints.get(p.name, p.annotation)) for p in signature.parameters.values()]

    @functools.wraps(fn)
    def wrapper(*args: Any, verbose: bool = False, debug: bool = False, **kwargs: Any) -> Any:
        RUN.verbose, RUN.debug = verbose or debug, debug
        _configure_logging(debug=debug, verbose=verbose)
        try:
            return fn(*args, **kwargs)
        except KeyboardInterrupt:
            raise _Interrupted from None  # typer would swallow a KeyboardInterrupt silently

    extra = [
        inspect.Parameter("verbose", inspect.Parameter.KEYWORD_ONLY, default=False, annotation=Verbose),
        inspect.Parameter("debug", inspect.Parameter.KEYWORD_ONLY, default=False, annotation=Debug),
    ]
    wrapper.__signature__ = signature.replace(parameters=[*params, *extra])  # type: ignore[attr-defined]
    wrapper.__annotations__ = {**hints, "verbose": Verbose, "debug": Debug}
    return wrapper


def register(app: typer.Typer, wrapped: Callable[..., Any], name: str, *, needs_arguments: bool = True) -> None:
    """Add ``wrapped`` to ``app`` as ``name``; without arguments it shows its help, unless
    it needs none."""
    app.command(name, cls=Command, help=inspect.getdoc(wrapped), no_args_is_help=needs_arguments)(wrapped)


def single_app(wrapped: Callable[..., Any], name: str) -> typer.Typer:
    """A typer app with ``wrapped`` as its only command (for a console script of its own)."""
    app = new_app(name, inspect.getdoc(wrapped) or "")
    register(app, wrapped, name)
    return app


class _Formatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        text = record.getMessage()
        if record.levelno >= logging.WARNING:
            text = f"{record.levelname.lower()}: {text}"
        return f"{RUN.prog}: {text}"


def _configure_logging(*, debug: bool, verbose: bool) -> None:
    root = logging.getLogger("eprjax")
    for handler in list(root.handlers):
        if getattr(handler, "_eprjax_cli", False):
            root.removeHandler(handler)
            handler.close()
    handler = logging.StreamHandler(sys.stderr)
    handler._eprjax_cli = True  # type: ignore[attr-defined]
    handler.setFormatter(_Formatter())
    root.addHandler(handler)
    root.setLevel(logging.DEBUG if debug else logging.INFO if verbose else logging.WARNING)
    root.propagate = False


def log_to_file(path: str | os.PathLike[str]) -> None:
    """Also write the log (all of it, debug included) to ``path``."""
    handler = logging.FileHandler(path, mode="w", encoding="utf-8")
    handler._eprjax_cli = True  # type: ignore[attr-defined]
    handler.setFormatter(logging.Formatter("%(asctime)s %(message)s"))
    handler.setLevel(logging.DEBUG)
    logging.getLogger("eprjax").addHandler(handler)


# -- files ----------------------------------------------------------------------------------


def _same_file(a: Path, b: Path) -> bool:
    try:
        if a.exists() and b.exists():
            return os.path.samefile(a, b)
    except OSError:
        pass
    return a.resolve() == b.resolve()


def _inode(path: Path) -> tuple[int, int]:
    st = path.stat()
    return st.st_dev, st.st_ino


def _source(given: str | os.PathLike[str]) -> Path:
    """The file an input name stands for (``mycell_`` is ``mycell_.i2i``), or the name itself
    where it stands for none."""
    try:
        return eprjax._io.input_path(given)[0]
    except eprjax.EprjaxError:
        return Path(given)


def check_output(output: str | os.PathLike[str], *inputs: str | os.PathLike[str]) -> Path:
    """The path ``output`` will be written to; refuses one that is also an input."""
    target, _ = file_format(output)
    for given in inputs:
        source = _source(given)
        if _same_file(target, source):
            raise eprjax.ParameterError(f"{target}: refusing to write over the input {given}")
        if target.resolve() in source.resolve().parents:  # an OME-Zarr output replaces its whole folder
            raise eprjax.ParameterError(f"{target}: refusing to replace a folder that holds the input {given}")
    return target


_GLOB = re.compile(r"[*?[]")


def file_pairs(paths: Sequence[str], outdir: str | None) -> list[tuple[str, str]]:
    """(input, output) pairs from a command line: ``IN OUT``, or with ``-outdir DIR`` any
    number of inputs (patterns the shell left unexpanded are expanded here, sorted), each
    written to DIR under its own name. Refuses, in one line, what cannot be meant: a count
    of names that fits neither form, a pattern that matches nothing, two inputs of one name,
    an output that would be one of the inputs."""
    if outdir is None:
        if len(paths) != 2:
            raise eprjax.ParameterError(
                f"expected IN OUT, got {len(paths)} name(s): {' '.join(paths) or '(none)'}; for several files, "
                "name them all and give -outdir DIR"
            )
        return [(paths[0], paths[1])]
    if not outdir.strip():
        raise typer.BadParameter("expected a folder name", param_hint="-outdir")
    inputs: list[str] = []
    for given in paths:
        if _GLOB.search(given) and not os.path.lexists(given):
            import glob

            matched = sorted(glob.glob(given))
            if not matched:
                raise eprjax.ParameterError(f"{given}: no file matches")
            inputs.extend(matched)
        else:
            inputs.append(given)
    if not inputs:
        raise eprjax.ParameterError("-outdir: no input files given")
    folder = Path(outdir)
    if folder.exists() and not folder.is_dir():
        raise eprjax.ParameterError(f"-outdir {outdir}: not a folder")
    pairs: list[tuple[str, str]] = []
    seen: dict[str, str] = {}
    known: dict[Any, str] = {}  # each input by its resolved path and, if it exists, its inode: which name it was given as
    for given in inputs:
        source = _source(given)
        name = source.name or Path(given).name
        if name in seen:
            raise eprjax.ParameterError(f"{seen[name]} and {given} would both be written to {folder / name}: give them one at a time")
        seen[name] = given
        known[source.resolve()] = given
        with contextlib.suppress(OSError):
            known[_inode(source)] = given
        pairs.append((given, str(folder / name)))
    for _, out in pairs:  # one look-up per output, not a comparison with every input
        target = Path(out)
        hit = known.get(target.resolve())
        if hit is None and target.exists():
            with contextlib.suppress(OSError):
                hit = known.get(_inode(target))
        if hit is not None:
            raise eprjax.ParameterError(f"{out}: refusing to write over the input {hit} (give another -outdir)")
    folder.mkdir(parents=True, exist_ok=True)
    return pairs


def for_each_file(pairs: Sequence[tuple[str, str]], one: Callable[[str, str], None], *, alone: Callable[[], bool] = lambda: True) -> None:
    """``one(input, output)`` for each pair. One pair: just that. Several: a line for each
    (always shown), and a file that fails (a bad file, a flag its shape refuses) is said in
    one line and the others go on, when this process is ``alone()`` (the processes of a
    cluster go through the files in step: there the first failure ends the run); the
    command then fails, naming the files that did. Compiled restorations are kept between
    files, so files of one shape compile once."""
    if len(pairs) == 1:
        one(*pairs[0])
        return
    failed: list[str] = []
    began = time.perf_counter()
    for k, (given, out) in enumerate(pairs, start=1):
        started = time.perf_counter()
        try:
            one(given, out)
        except (eprjax.EprjaxError, OSError) as e:
            if not alone():
                raise
            failed.append(given)
            print(f"{RUN.prog}: error: [{k}/{len(pairs)}] {given}: {' '.join(str(e).split())}", file=sys.stderr, flush=True)
            continue
        print(f"{RUN.prog}: [{k}/{len(pairs)}] {given} -> {out}, {time.perf_counter() - started:.1f} s", file=sys.stderr, flush=True)
    print(f"{RUN.prog}: {len(pairs) - len(failed)} of {len(pairs)} files done in {time.perf_counter() - began:.1f} s", file=sys.stderr, flush=True)
    if failed:
        raise eprjax.EprjaxError(f"{len(failed)} of {len(pairs)} files failed: {', '.join(failed)}")


# -- running --------------------------------------------------------------------------------


def _fail(message: str, code: int) -> int:
    message = " ".join(str(message).split())
    print(f"{RUN.prog}: error: {message}", file=sys.stderr)
    return code


def _stop_requested(signum: int, frame: Any) -> None:
    """SIGINT's and SIGTERM's handler: only sets `STOP`, which the main thread's wait sees.
    It raises nothing: Python runs a handler wherever the main thread is, and an exception
    raised inside a garbage-collector callback (JAX has one) is printed and swallowed."""
    STOP.set()


STOP = CANCEL  # set when Ctrl-C or SIGTERM arrives: the command stops at its next report, and writes nothing more
GRACE = 1.0  # seconds the command has to stop by itself before the process ends without it


def check_stop() -> None:
    """Raise KeyboardInterrupt if the command was asked to stop (for progress callbacks)."""
    if STOP.is_set():
        raise KeyboardInterrupt


def run(app: typer.Typer, prog: str, argv: Sequence[str] | None = None) -> int:
    """Run ``app`` on ``argv`` (default: the process's arguments); the exit status.

    In the main thread the command runs in a worker thread while this one waits for it, so
    that Ctrl-C and SIGTERM are heard at once even while the worker is inside a long
    compiled computation (where Python cannot interrupt it): the worker is asked to stop
    (`STOP`, at its next progress report), and if it has not within `GRACE` seconds the
    temporary files of unfinished outputs are removed and the process ends, status 130."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if threading.current_thread() is not threading.main_thread():
        return _run(app, prog, argv)
    STOP.clear()
    result: dict[str, int] = {}
    done = threading.Event()  # not Thread.join: a join that an interrupt breaks can leave the thread seeming ended

    def work() -> None:
        try:
            result["code"] = _run(app, prog, argv)
        finally:
            done.set()

    worker = threading.Thread(target=work, name="eprjax-command", daemon=True)
    previous = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    for s in previous:
        signal.signal(s, _stop_requested)
    heard = _SignalWatch()
    try:
        worker.start()
        while not done.wait(0.1):
            if STOP.is_set():
                raise KeyboardInterrupt
    except KeyboardInterrupt:
        STOP.set()
        if not done.wait(GRACE):
            from eprjax._io import remove_partial_outputs

            remove_partial_outputs()
            print(f"{RUN.prog}: error: interrupted; no partial output was left", file=sys.stderr, flush=True)
        # the process ends here, at once: JAX's threads may be inside compiled code, which an
        # interpreter shutting down around them would abort (measured: SIGABRT, SIGSEGV)
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(130)
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        heard.close()
    return result.get("code", 130)


class _SignalWatch:
    """Whether SIGINT or SIGTERM has arrived, even before the main thread has run its
    handler (which sets `STOP`): the signal still pending, or its number written to the
    wakeup pipe by the interpreter's C-level handler. Outputs check it before they are put
    in place (`eprjax._io.STOPPING`), so that a signal that arrives while one is written
    always keeps it from appearing, however the threads are scheduled."""

    def __init__(self) -> None:
        from eprjax import _io

        self._io = _io
        self._read, self._write = os.pipe()
        os.set_blocking(self._read, False)
        os.set_blocking(self._write, False)
        self._previous = signal.set_wakeup_fd(self._write, warn_on_full_buffer=False)
        self._heard = False
        _io.STOPPING.append(self)

    def __call__(self) -> bool:
        if self._heard or signal.sigpending() & {signal.SIGINT, signal.SIGTERM}:
            return True
        with contextlib.suppress(BlockingIOError, OSError):
            self._heard = bool(set(os.read(self._read, 512)) & {int(signal.SIGINT), int(signal.SIGTERM)})
        return self._heard

    def close(self) -> None:
        with contextlib.suppress(ValueError):
            signal.set_wakeup_fd(self._previous)
        with contextlib.suppress(ValueError):
            self._io.STOPPING.remove(self)
        os.close(self._read)
        os.close(self._write)


def _run(app: typer.Typer, prog: str, argv: list[str]) -> int:
    """`run`'s work, in the thread that calls it."""
    RUN.prog, RUN.argv, RUN.verbose, RUN.debug = prog, tuple(argv), False, False
    try:
        result = app(args=argv, prog_name=prog, standalone_mode=False)
        return result if isinstance(result, int) else 0
    except typer.Exit as e:
        return e.exit_code
    except typer.Abort:
        return _fail("aborted", 1)
    except click_exceptions.ClickException as e:
        if type(e).__name__ == "NoArgsIsHelpError":  # no arguments at all: the help, on stderr
            print(e.format_message(), file=sys.stderr)
            return 2
        ctx = getattr(e, "ctx", None)
        where = getattr(ctx, "command_path", None) or prog
        hint = f" (see {where} -h)" if isinstance(e, click_exceptions.UsageError) else ""
        return _fail(e.format_message() + hint, e.exit_code)
    except SystemExit as e:
        return e.code if isinstance(e.code, int) else 1
    except (KeyboardInterrupt, _Interrupted):
        return _fail("interrupted; no partial output was left", 130)
    except eprjax.EprjaxError as e:
        if RUN.debug:
            traceback.print_exc()
        return _fail(str(e), 1)
    except MemoryError:
        if RUN.debug:
            traceback.print_exc()
        return _fail("out of memory", 1)
    except OSError as e:  # the file system: full, read-only, permissions, gone (a store, a log, a cache)
        if RUN.debug:
            traceback.print_exc()
        where = f"{e.filename}: " if e.filename else ""
        return _fail(f"{where}{e.strerror or e} (the file system refused: is it full, read-only or not yours?)", 1)
    except Exception as e:
        if RUN.debug:
            traceback.print_exc()
        if "RESOURCE_EXHAUSTED" in str(e):  # the device's memory (XLA's allocator)
            found = re.search(r"(Out of memory.*?)(?:\.\s|\s*\[|\n|$)", str(e))
            what = found.group(1).strip() if found else "out of memory"
            return _fail(f"the device ran out of memory ({what}); give a smaller -memory budget (MiB), so that the volume is restored in smaller segments", 1)
        if RUN.debug:
            return _fail(f"internal error: {type(e).__name__}: {e}", 1)
        return _fail(f"internal error: {type(e).__name__}: {e} (run with -D for the traceback)", 1)


class Progress:
    """Reports the iteration as it goes: a progress line with -V, every iteration with -D."""

    def __init__(self, max_iterations: int, tol: float, label: str) -> None:
        self.max_iterations, self.tol, self.label = max_iterations, tol, label
        self.start = time.perf_counter()
        self.first: float | None = None  # when the first iteration ended (after compiling)
        self.shown = 0.0
        self.tty = sys.stderr.isatty()
        self.recent: list[tuple[int, float]] = []
        self.last: tuple[int, float] = (0, math.nan)

    def __call__(self, k, rel, objective, step, active) -> None:
        check_stop()  # Ctrl-C or SIGTERM: stop here
        now = time.perf_counter()
        k, rel = int(k), float(rel)
        if self.first is None:
            self.first = now
        self.last = (k, rel)
        self.recent = [*self.recent[-19:], (k, math.log(max(rel, 1e-30)))]
        log.debug(
            "%siteration %d: objective %.6e, relative gradient %.3e, step %.3e, active %.1f%%",
            self.label, k, float(objective), rel, float(step), 100 * float(active),
        )
        if RUN.verbose and not RUN.debug and (now - self.shown > (0.2 if self.tty else 10.0)):
            self.shown = now
            self._show(k, rel, now)

    def remaining(self, k: int, now: float) -> float:
        """Seconds left: the iterations the recent convergence rate still needs (at most the
        cap), at the recent pace."""
        if self.first is None or k < 2:
            return math.nan
        per_iteration = (now - self.first) / max(k - 1, 1)
        left = self.max_iterations - k
        if len(self.recent) >= 5:
            (k0, l0), (k1, l1) = self.recent[0], self.recent[-1]
            slope = (l1 - l0) / max(k1 - k0, 1)
            if slope < 0:
                left = min(left, max(0, math.ceil((math.log(self.tol) - l1) / slope)))
        return left * per_iteration

    def _show(self, k: int, rel: float, now: float) -> None:
        width = 24
        done = min(width, int(width * k / self.max_iterations))
        eta = self.remaining(k, now)
        text = (
            f"{RUN.prog}: {self.label}[{'#' * done}{'.' * (width - done)}] iteration {k}/{self.max_iterations}, "
            f"relative gradient {rel:.2e} (target {self.tol:.0e}), {now - self.start:.1f} s"
            + ("" if math.isnan(eta) else f", about {eta:.0f} s left")
        )
        print(("\r" + text + "\x1b[K") if self.tty else text, end="" if self.tty else "\n", file=sys.stderr, flush=True)

    def finish(self, solution: eprjax.Solution) -> str:
        now = time.perf_counter()
        if RUN.verbose and not RUN.debug and self.first is not None:
            self._show(*self.last, now)
            if self.tty:
                print(file=sys.stderr)
        k = int(np.max(np.asarray(solution.iterations)))
        rel = float(np.max(np.asarray(solution.relative_gradient)))
        compile_s = (self.first or now) - self.start
        per = (now - (self.first or now)) / max(k - 1, 1)
        state = "converged" if bool(np.all(np.asarray(solution.converged))) else "not converged"
        return (
            f"{self.label}{k} iterations, relative gradient {rel:.2e} ({state}), "
            f"{now - self.start:.1f} s ({compile_s:.1f} s to the first iteration, then {1000 * per:.1f} ms per iteration)"
        )
