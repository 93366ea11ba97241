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

import dataclasses
import functools
import inspect
import logging
import os
import re
import shlex
import signal
import sys
import threading
import traceback
import typing
from collections.abc import Callable, Sequence
from difflib import get_close_matches
from pathlib import Path
from typing import Annotated, Any

import typer
import typer.core

try:  # typer >= 0.20 carries its own copy of click
    from typer._click import exceptions as click_exceptions
except ImportError:  # pragma: no cover - older typer on the real click
    from click import exceptions as click_exceptions  # type: ignore[no-redef]

import eprjax
from eprjax._io import file_format

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


def check_output(output: str | os.PathLike[str], *inputs: str | os.PathLike[str]) -> Path:
    """The path ``output`` will be written to; refuses one that is also an input."""
    target, _ = file_format(output)
    for given in inputs:
        try:
            source, _ = eprjax._io.input_path(given)
        except eprjax.EprjaxError:
            source = Path(given)
        if _same_file(target, source):
            raise eprjax.ParameterError(f"{target}: refusing to write over the input {given}")
    return target


# -- running --------------------------------------------------------------------------------


def _fail(message: str, code: int) -> int:
    message = " ".join(str(message).split())
    print(f"{RUN.prog}: error: {message}", file=sys.stderr)
    return code


def _raise_interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def run(app: typer.Typer, prog: str, argv: Sequence[str] | None = None) -> int:
    """Run ``app`` on ``argv`` (default: the process's arguments); the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    RUN.prog, RUN.argv, RUN.verbose, RUN.debug = prog, tuple(argv), False, False
    previous = signal.getsignal(signal.SIGTERM)
    main_thread = threading.current_thread() is threading.main_thread()
    if main_thread:
        signal.signal(signal.SIGTERM, _raise_interrupt)  # clean up partial outputs on kill
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
    finally:
        if main_thread:
            signal.signal(signal.SIGTERM, previous)
