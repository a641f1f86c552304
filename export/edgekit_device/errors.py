"""The one error a bundle can raise at load or run time."""


class BundleError(Exception):
    """A bundle that cannot be used as it is: missing or corrupted file, wrong manifest, bad request.

    The message is one sentence naming what is wrong (the file, the key or the value) and how to fix it."""
