"""The one base class of errors caused by the user's input (bad parameters, missing files)."""


class HybridlibError(Exception):
    """A user mistake or an unusable input: the CLI prints its message as one line, exit code 2."""


class ModelError(HybridlibError):
    """A model cannot be built or loaded (missing package, malformed file, folder without weights)."""
