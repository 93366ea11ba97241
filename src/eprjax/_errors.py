"""The errors eprjax raises at its boundary (files, arguments), all subclasses of one type.

Every message names the thing at fault (a file, an argument) and says what was expected, in
one line, so that the command-line layer can print it as it is.
"""

from __future__ import annotations


class EprjaxError(Exception):
    """Base class of every error eprjax raises on purpose; its message is one readable line."""


class FileFormatError(EprjaxError, ValueError):
    """A file is missing its data, malformed, or not in the format its name promises."""


class MissingFileError(EprjaxError, FileNotFoundError):
    """A file that should be read does not exist."""


class ParameterError(EprjaxError, ValueError):
    """An argument has the wrong shape, type or value."""
