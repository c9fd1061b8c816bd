"""The one exception type that user-facing code raises for bad input, and the JSON file
reader that turns a file's problems into it."""

from __future__ import annotations

import json
from pathlib import Path


class InputError(ValueError):
    """Bad or missing input file. The message is one line naming the file and the problem."""

    def __init__(self, path: str | Path, problem: str):
        self.path = str(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")


class TooLarge(InputError):
    """Input refused for its size (an image over the pixel limit, a body over the byte limit)."""


def read_json(path: str | Path, missing: str = "file not found"):
    """The parsed contents of a JSON file; a missing or malformed file is an
    :class:`InputError` naming it (``missing`` says what was not found)."""
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise InputError(path, missing) from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise InputError(path, f"not valid JSON ({e})") from None
