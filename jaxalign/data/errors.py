"""Errors for malformed data files, always naming the file and line."""


class DataFormatError(ValueError):
    """A data file that cannot be parsed; the message names the file, line and expectation."""

    def __init__(self, path, message: str, line: int | None = None):
        where = f"{path}:{line}" if line is not None else f"{path}"
        super().__init__(f"{where}: {message}")
