"""The one exception type every stage raises for bad input; the CLI prints it as one line."""


class DDRNetError(Exception):
    """A user-facing error: the message names the file and the problem, no traceback is shown."""
