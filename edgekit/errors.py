"""Errors a user can cause.

A ``UserError`` carries one sentence that says what is wrong and how to fix it. The CLI prints
it without a traceback and exits with status 2; every other exception is a bug and still raises.
"""


class UserError(Exception):
    """A problem with the user's input (path, format, value), not a bug in edgekit."""
