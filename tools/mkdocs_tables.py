"""A mkdocs hook: a Markdown table row whose cells do not match its header's is a warning
(and so fails the strict build). Python-Markdown reads every unescaped ``|`` as a column
break, so ``||x||`` inside a cell silently splits it and drops what falls past the header's
columns; write ``‖x‖`` or ``\\|`` instead."""

from __future__ import annotations

import logging
import re

log = logging.getLogger("mkdocs.plugins.eprjax_tables")

_CODE = re.compile(r"`[^`]*`")
_PIPE = re.compile(r"(?<!\\)\|")


def cells(line: str) -> int:
    """How many cells Python-Markdown sees in a table row (pipes in code spans count too:
    it splits there as well, unless escaped)."""
    body = line.strip()
    body = body[1:] if body.startswith("|") else body
    body = body[:-1] if body.endswith("|") and not body.endswith("\\|") else body
    return len(_PIPE.findall(body)) + 1


def check(markdown: str, where: str) -> list[str]:
    """The problems in ``markdown``'s tables, one line each."""
    problems, header, fenced = [], None, False
    lines = markdown.split("\n")
    for number, line in enumerate(lines, 1):
        if line.lstrip().startswith("```"):
            fenced = not fenced
        if fenced or not line.lstrip().startswith("|"):
            header = None
            continue
        if header is None:
            header = cells(line)
            continue
        if cells(line) != header:
            problems.append(f"{where}:{number}: a table row with {cells(line)} cells under a header of {header} (an unescaped '|', such as '||x||'?)")
    return problems


def on_page_markdown(markdown, page, config, files):  # mkdocs's hook
    for problem in check(markdown, page.file.src_path):
        log.warning(problem)
    return markdown
