"""The few project errors. The CLI turns a FatalError into one line and exit code 2."""


class FatalError(Exception):
    """Something a person must fix (a missing file, a busy port, a broken config)."""
