"""User-facing errors: one line, naming the file, class or value at fault."""


class D3HRError(Exception):
    """An error caused by the user's input or environment, reported as one line without a traceback."""
