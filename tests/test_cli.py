"""The command-line frame: flags as the originals spell them, one-line errors, safe outputs."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

import eprjax
from eprjax.cli import app, main, mmtoi2i_main

from .conftest import script


def run_main(argv: list[str], capsys: pytest.CaptureFixture[str], entry=main) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as info:
        entry(argv)
    out, err = capsys.readouterr()
    return info.value.code, out, err


@pytest.fixture
def volume(workdir: Path) -> Path:
    rng = np.random.default_rng(1)
    return eprjax.write(
        "vol.i2i",
        (rng.random((4, 8, 9)) * 100).astype(np.float32),
        voxel_size_um=(0.25, 0.187, 0.187),
        history=["* mmtoi2i acq"],
    )


def test_help_lists_every_flag() -> None:
    runner = CliRunner()
    result = runner.invoke(app, ["-h"])
    assert result.exit_code == 0 and "convert" in result.output and "mmtoi2i" in result.output
    result = runner.invoke(app, ["convert", "--help"])
    assert result.exit_code == 0
    for flag in ("-int16", "-int16_scale", "-size", "-spaced", "-channel", "-V", "-D", "-h"):
        assert f"{flag} " in result.output or f"{flag}," in result.output, flag
    result = runner.invoke(app, ["mmtoi2i", "-h"])
    for flag in ("-int16", "-outdir", "-o", "-list", "-V", "-D"):
        assert flag in result.output, flag


def test_flags_parse_as_the_originals(volume: Path) -> None:
    result = CliRunner().invoke(app, ["convert", "-size", "0.1", "-spaced", "0.3", "-V", "vol", "out.tif"])
    assert result.exit_code == 0, result.output
    img = eprjax.read("out.tif")
    np.testing.assert_allclose(img.voxel_size_um, (0.3, 0.1, 0.1), rtol=1e-6)


@pytest.mark.parametrize(
    ("argv", "code", "message"),
    [
        (["convert", "-smooth", "1", "vol", "o.i2i"], 2, "unknown flag -smooth (see eprjax convert -h)"),
        (["convert", "-INT16", "vol", "o.i2i"], 2, "unknown flag -INT16 (flags are case-sensitive: did you mean -int16?)"),
        (["convert", "-sizes", "1", "vol", "o.i2i"], 2, "unknown flag -sizes (did you mean -size"),
        (["convert", "-size", "abc", "vol", "o.i2i"], 2, "Invalid value for '-size'"),
        (["convert", "-size", "-1", "vol", "o.i2i"], 2, "Invalid value for '-size'"),
        (["convert", "-int16", "-int16_scale", "vol", "o.i2i"], 2, "choose one of -int16 and -int16_scale"),
        (["convert", "vol"], 2, "Missing argument 'OUT'"),
        (["convert", "nothere.tif", "o.i2i"], 1, "nothere.tif: no such file"),
        (["convert", "vol", "vol.i2i"], 1, "refusing to write over the input vol"),
        (["convert", "vol.i2i", "vol"], 1, "refusing to write over the input vol.i2i"),
        (["convert", "vol", "o.png"], 1, "unsupported file type '.png'"),
        (["convert", "vol", "nodir/o.i2i"], 1, "the directory nodir does not exist"),
        (["convert", "-size", "1e-300", "vol", "o.tif"], 2, "Invalid value for -size: must be between 1e-06 and 1e+06 um"),
        (["convert", "vol", ""], 1, "'': not a file name"),
        (["convert", "vol", "."], 1, "'.': not a file name"),
        (["prepdata", "-offset", "nan", "vol", "o.i2i"], 2, "Invalid value for -offset: must be a finite number of counts, got nan"),
        (["frobnicate"], 2, "No such command 'frobnicate'"),
    ],
)
def test_errors_are_one_line(volume: Path, capsys, argv: list[str], code: int, message: str) -> None:
    before = volume.read_bytes()
    status, out, err = run_main(argv, capsys)
    assert status == code
    assert err.count("\n") == 1 and err.startswith("eprjax: error: "), err
    assert message in err
    assert "Traceback" not in err
    assert volume.read_bytes() == before
    assert sorted(p.name for p in Path(".").iterdir()) == ["vol.i2i"]


def test_malformed_input_gives_one_line_and_no_output(workdir: Path, capsys) -> None:
    Path("bad.i2i").write_bytes(b"R     5     4     3 B" + b" " * 1003 + bytes(10))
    status, _, err = run_main(["convert", "bad", "out.tif"], capsys)
    assert status == 1
    assert err == (
        "eprjax: error: bad.i2i: truncated: the header describes 5 x 4 x 3 type R pixels "
        "(1264 bytes with the header), the file has 1034 bytes\n"
    )
    assert not Path("out.tif").exists()


def test_debug_shows_the_traceback(workdir: Path, capsys) -> None:
    status, _, err = run_main(["convert", "-D", "nothere.tif", "o.i2i"], capsys)
    assert status == 1
    assert "Traceback (most recent call last)" in err
    assert err.rstrip().splitlines()[-1] == "eprjax: error: nothere.tif: no such file"


def test_convert_keeps_metadata_and_appends_history(volume: Path, capsys) -> None:
    status, _, err = run_main(["convert", "-V", "vol", "vol.ome.tif"], capsys)
    assert status == 0
    assert "eprjax: read vol: ZYX 4x8x9 >f4, voxel (z, y, x) 0.25 x 0.187 x 0.187 um" in err
    assert "eprjax: wrote vol.ome.tif" in err
    status, _, _ = run_main(["convert", "vol.ome.tif", "back"], capsys)
    assert status == 0
    back = eprjax.read("back")
    np.testing.assert_array_equal(np.asarray(back), np.asarray(eprjax.read("vol")))
    np.testing.assert_allclose(back.voxel_size_um, (0.25, 0.187, 0.187))
    assert back.history == ("* mmtoi2i acq", "* eprjax convert -V vol vol.ome.tif", "* eprjax convert vol.ome.tif back")


def test_convert_int16(volume: Path, capsys) -> None:
    assert run_main(["convert", "-int16", "vol", "i.i2i"], capsys)[0] == 0
    img = eprjax.read("i.i2i")
    assert Path("i.i2i").read_bytes()[:1] == b"I"
    np.testing.assert_array_equal(np.asarray(img), np.rint(np.asarray(eprjax.read("vol"))))
    assert img.history[-1] == f"int16: values rounded, 0 of {4 * 8 * 9} clipped to -32768..32767"
    assert run_main(["convert", "-int16_scale", "vol", "s.tif"], capsys)[0] == 0
    scaled = np.asarray(eprjax.read("s.tif"))
    assert scaled.dtype == np.int16 and np.abs(scaled).max() == 32767


def test_interrupt_leaves_no_output(volume: Path, capsys, monkeypatch) -> None:
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(eprjax._io, "write_i2i", interrupted)
    status, _, err = run_main(["convert", "vol", "out.i2i"], capsys)
    assert status == 130 and err == "eprjax: error: interrupted; no partial output was left\n"
    assert sorted(p.name for p in Path(".").iterdir()) == ["vol.i2i"]


def test_internal_errors_are_one_line_too(volume: Path, capsys, monkeypatch) -> None:
    def broken(*args, **kwargs):
        raise ZeroDivisionError("oops")

    monkeypatch.setattr(eprjax._io, "write_i2i", broken)
    status, _, err = run_main(["convert", "vol", "out.i2i"], capsys)
    assert status == 1
    assert err == "eprjax: error: internal error: ZeroDivisionError: oops (run with -D for the traceback)\n"


def test_no_arguments_shows_help(capsys) -> None:
    status, _, err = run_main([], capsys)
    assert status == 2 and "Commands" in err
    status, _, err = run_main([], capsys, entry=mmtoi2i_main)
    assert status == 2 and "Usage: mmtoi2i" in err


# -- as real processes --------------------------------------------------------------------


def test_console_scripts(volume: Path) -> None:
    eprjax_bin, mmtoi2i_bin = script("eprjax"), script("mmtoi2i")
    done = subprocess.run([eprjax_bin, "convert", "vol", "v.tif"], capture_output=True, text=True)
    assert done.returncode == 0 and done.stderr == "", done.stderr
    assert eprjax.read("v.tif").shape == (4, 8, 9)
    done = subprocess.run([eprjax_bin, "convert", "-nope", "vol", "v.tif"], capture_output=True, text=True)
    assert done.returncode == 2
    assert done.stderr == "eprjax: error: unknown flag -nope (see eprjax convert -h)\n"
    done = subprocess.run([mmtoi2i_bin, "missing_dir"], capture_output=True, text=True)
    assert done.returncode == 1 and done.stderr == "mmtoi2i: error: missing_dir: no such directory\n"
    done = subprocess.run([mmtoi2i_bin, "-h"], capture_output=True, text=True)
    assert done.returncode == 0 and "Usage: mmtoi2i [OPTIONS] DIR" in done.stdout.replace("{DIR}", "DIR")


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_while_jax_loads_is_one_line(signum) -> None:
    """Ctrl-C or SIGTERM in the second or two a console script spends loading JAX: one line,
    status 130, no traceback (the default handler's KeyboardInterrupt lands in JAX's
    garbage-collector callback and is swallowed there: the program then went on, status 0)."""
    started = subprocess.Popen([script("epr"), "-h"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(0.5)
    started.send_signal(signum)
    _, err = started.communicate(timeout=60)
    assert started.returncode == 130, err
    assert err == "epr: error: interrupted while starting\n"


def test_a_signal_heard_inside_a_gc_callback_is_not_lost() -> None:
    """Python runs a signal's handler wherever the main thread is, also inside a garbage-
    collector callback (JAX registers one), where an exception it raised would be printed and
    swallowed (once in 8 kills: a traceback, the output written, status 0). The handler only
    sets the stop flag, which the main thread's wait then sees."""
    code = textwrap.dedent(
        """
        import gc, os, signal, time
        from eprjax.cli import _frame
        signal.signal(signal.SIGTERM, _frame._stop_requested)
        fired = []
        def callback(phase, info):
            if phase == "start" and not fired:
                fired.append(1)
                os.kill(os.getpid(), signal.SIGTERM)
                t = time.perf_counter()
                while time.perf_counter() - t < 0.3:  # the handler runs in here
                    pass
        gc.callbacks.append(callback)
        gc.collect()
        gc.callbacks.remove(callback)
        print(bool(fired), _frame.STOP.is_set())
        """
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and done.stdout.split() == ["True", "True"], done.stderr
    assert "Exception ignored" not in done.stderr


def test_sigterm_during_a_write_leaves_nothing(volume: Path) -> None:
    """A kill (SIGTERM) arriving while the output is being written: no partial file."""
    code = textwrap.dedent(
        """
        import os, signal, sys
        import eprjax._io
        from eprjax.cli import main
        real = eprjax._io.write_i2i
        def slow(f, *args, **kwargs):
            f.write(b"partial")
            os.kill(os.getpid(), signal.SIGTERM)
            return real(f, *args, **kwargs)
        eprjax._io.write_i2i = slow
        main(["convert", "vol", "out.i2i"])
        """
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 130, done.stderr
    assert sorted(p.name for p in Path(".").iterdir()) == ["vol.i2i"]


def test_the_library_and_commands_import_no_gui():
    """napari and Qt are the plugin's alone: importing eprjax and its commands loads neither."""
    code = (
        "import sys, eprjax, eprjax.cli, eprjax.cli._epr, eprjax.cli._prep, eprjax.cli._tune; "
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('napari', 'qtpy', 'PyQt5', 'PyQt6', 'PySide2', 'PySide6', 'magicgui', 'vispy')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "[]"


FAULTS = """
import ctypes, resource, threading
from eprjax._stream import keep_freed_memory

changed = keep_freed_memory()

def faults(allocate):
    allocate()  # the first allocation grows the heap: page faults either way
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    allocate()
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before

libc = ctypes.CDLL("libc.so.6")
libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
libc.free.argtypes = [ctypes.c_void_p]

def big():  # 64 MiB, over glibc's largest mmap threshold, every page touched (as XLA's buffers,
    # without NumPy's huge pages)
    p = libc.malloc(2**26)
    ctypes.memset(p, 1, 2**26)
    libc.free(p)

def in_a_thread():
    t = threading.Thread(target=big)
    t.start()
    t.join()

print(changed, faults(big), faults(in_a_thread))
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's allocator")
@pytest.mark.parametrize("setting", ["", "system"])
def test_epr_keeps_freed_memory_for_the_next_array(setting):
    """What `eprjax._stream.keep_freed_memory` does for a volume `epr` restores whole: an
    array of 64 MiB allocated a second time, in the main thread and in a new one, costs no
    page faults (glibc by default maps it afresh: 16384 faults of 4 KiB), unless
    EPRJAX_MALLOC=system."""
    env = {**os.environ, "EPRJAX_MALLOC": setting}
    done = subprocess.run([sys.executable, "-c", FAULTS], capture_output=True, text=True, env=env, check=True)
    changed, main_thread, thread = done.stdout.split()
    pages = 2**26 // 4096
    if setting == "system":
        assert changed == "False" and int(main_thread) > pages / 2 and int(thread) > pages / 2
    else:
        assert changed == "True" and int(main_thread) < pages / 16 and int(thread) < pages / 16
