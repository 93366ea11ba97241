"""The documentation: the command-line reference is what the commands say, and names every
flag; the site builds strictly where mkdocs is installed (CI installs it)."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
import typer

from eprjax.cli import app
from eprjax.cli._reference import reference_markdown

ROOT = Path(__file__).resolve().parents[1]


def test_the_cli_reference_is_up_to_date_and_complete() -> None:
    page = (ROOT / "docs" / "cli-reference.md").read_text()
    assert page == reference_markdown(), "regenerate: python -m eprjax.cli._reference > docs/cli-reference.md"
    group = typer.main.get_command(app)
    for name, command in group.commands.items():
        assert f"## {name}\n" in page
        for param in command.params:
            for flag in param.opts:
                if flag.startswith("-"):
                    assert f"`{flag}`" in page, f"{name} {flag}"


@pytest.mark.skipif(shutil.which("mkdocs") is None and not (ROOT / ".venv" / "bin" / "mkdocs").exists(), reason="mkdocs is not installed")
def test_the_site_builds_strictly(tmp_path) -> None:
    mkdocs = shutil.which("mkdocs") or str(ROOT / ".venv" / "bin" / "mkdocs")
    done = subprocess.run(
        [mkdocs, "build", "--strict", "--site-dir", str(tmp_path / "site")], cwd=ROOT, capture_output=True, text=True,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"}, timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert (tmp_path / "site" / "cli-reference" / "index.html").exists()


def test_tables_keep_their_columns() -> None:
    """The strict build's table hook (tools/mkdocs_tables.py) finds a '||' inside a cell, and
    no page has one."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("mkdocs_tables", ROOT / "tools" / "mkdocs_tables.py")
    hook = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(hook)
    bad = "| a | b |\n|---|---|\n| `-co` | stop when ||g|| is small |\n"
    assert len(hook.check(bad, "x.md")) == 1
    assert hook.check(bad.replace("||g||", "‖g‖"), "x.md") == []
    assert hook.check("```\n| a |\n| b | c |\n```\n", "x.md") == []  # code blocks are not tables
    for page in sorted((ROOT / "docs").glob("*.md")):
        assert hook.check(page.read_text(), page.name) == [], page.name


def test_public_docstrings_cite_no_internal_design_notes() -> None:
    """The API page shows the docstrings; its readers do not have DESIGN.md."""
    import inspect

    import eprjax

    for name in dir(eprjax):
        if name.startswith("_"):
            continue
        obj = getattr(eprjax, name)
        docs = [inspect.getdoc(obj) or ""]
        if inspect.isclass(obj):
            docs += [inspect.getdoc(v) or "" for v in vars(obj).values()]
        assert not any("DESIGN" in d for d in docs), name
