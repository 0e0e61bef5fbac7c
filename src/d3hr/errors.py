"""User-facing errors: one line, naming the file, class or value at fault."""


class D3HRError(Exception):
    """An error caused by the user's input or environment, reported as one line without a traceback."""


def first_line(exc: BaseException) -> str:
    """The first non-empty line of an exception's message (its type name when it has none): what a D3HRError
    quoting a library's error keeps of it."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
