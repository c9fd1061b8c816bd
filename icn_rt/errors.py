"""The one exception type that user-facing code raises for bad input."""

from __future__ import annotations

from pathlib import Path


class InputError(ValueError):
    """Bad or missing input file. The message is one line naming the file and the problem."""

    def __init__(self, path: str | Path, problem: str):
        self.path = str(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")
