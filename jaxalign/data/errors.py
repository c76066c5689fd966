"""Errors for malformed data files, always naming the file and line."""


class DataFormatError(ValueError):
    """A data file that cannot be parsed; the message names the file, line and expectation."""

    def __init__(self, path, message: str, line: int | None = None):
        where = f"{path}:{line}" if line is not None else f"{path}"
        super().__init__(f"{where}: {message}")


def decode_utf8(data: bytes, path, line: int | None = None, offset: int = 0) -> str:
    """``data`` as text: all of file ``path``, or its line ``line`` starting at byte ``offset``.
    A binary or differently encoded file fails naming the file, the line and the byte offset,
    rather than as a bare UnicodeDecodeError that names neither."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        if line is None:
            line = data.count(b"\n", 0, e.start) + 1
        raise DataFormatError(path, f"not UTF-8 text: byte 0x{data[e.start]:02x} at offset {offset + e.start} "
                                    "cannot be decoded (a binary file, or another encoding?)", line) from None
