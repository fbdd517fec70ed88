"""The one exception type that reaches users as a one-line message instead of a traceback."""


class SltnetError(Exception):
    """A user mistake (bad file, bad option, bad data), reported as one line.

    The message names the file (or option) and the problem; command-line tools print it and exit
    with a non-zero status without a traceback.
    """
