"""The command-line reference (docs/cli-reference.md), generated from the typer application:

    python -m eprjax.cli._reference > docs/cli-reference.md

A test checks that the committed page is what this writes, so the reference cannot drift
from the commands.
"""

from __future__ import annotations

import inspect

import typer

SCRIPT_NAMES = {"epr": "epr, epr_i2i", "gpu_epr": "gpu_epr", "super_epr": "super_epr", "preppsf": "preppsf", "prepdata": "prepdata", "mmtoi2i": "mmtoi2i"}


def _cell(text: str) -> str:
    return " ".join(str(text).split()).replace("|", "\\|")


def _usage(name: str, command) -> str:
    parts, files = [], []
    for p in command.params:
        if isinstance(p, typer.core.TyperArgument):
            files.append(p.metavar or p.name.upper())
            continue
        flag = p.opts[0]
        if p.is_flag:
            parts.append(f"[{flag}]")
        else:
            value = p.metavar or ("VALUE" if p.nargs == 1 else " ".join(["VALUE"] * p.nargs))
            parts.append(f"{flag} {value}" if p.required else f"[{flag} {value}]")
    return f"{name} " + " ".join(parts + files)  # flags first, files last, as in the originals' pages


def reference_markdown() -> str:
    """The whole page."""
    from . import app

    group = typer.main.get_command(app)
    lines = [
        "# Command-line reference",
        "",
        "Generated from the commands themselves (`python -m eprjax.cli._reference`). Every",
        "command runs as `eprjax COMMAND ...`; those named in the originals also under their own",
        "name (`epr`, `epr_i2i`, `gpu_epr`, `super_epr`, `preppsf`, `prepdata`, `mmtoi2i`). Flags",
        "are single-dash and case-sensitive, as the originals'; see [the command line](command-line.md)",
        "for the conventions.",
        "",
    ]
    for name, command in group.commands.items():
        lines += [f"## {name}", ""]
        if name in SCRIPT_NAMES:
            lines += [f"Also the script(s): `{SCRIPT_NAMES[name]}`.", ""]
        lines += ["```", _usage(name, command), "```", ""]
        lines += [inspect.cleandoc(command.help or ""), ""]
        lines += ["| argument or flag | meaning | default |", "|---|---|---|"]
        for p in command.params:
            if isinstance(p, typer.core.TyperArgument):
                name = (p.metavar or p.name.upper()).replace("|", "&#124;")  # a '|' would end the table's cell
                lines.append(f"| <code>{name}</code> | {_cell(p.help or '')} | required |")
                continue
            flags = ", ".join(f"`{o}`" for o in p.opts)
            if p.is_flag:
                default = "off"
            elif p.required:
                default = "required"
            elif p.default is None:
                default = "see meaning"
            else:
                default = f"`{' '.join(map(str, p.default)) if isinstance(p.default, (tuple, list)) else p.default}`"
            lines.append(f"| {flags} | {_cell(p.help or '')} | {default} |")
        lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    print(reference_markdown(), end="")
