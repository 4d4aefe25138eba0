"""The one exception type that means "the user asked for something we cannot do".

The CLI prints its message (no traceback) and exits with status 2. Library code raises it for bad
arguments, missing data offline, corrupt files and the like; programming errors stay ordinary
exceptions so that they keep their tracebacks.
"""


class UserError(Exception):
    """A problem with the user's input or environment, reported as one clear message (exit status 2)."""


def require(condition: bool, message: str) -> None:
    """Raise :class:`UserError` with ``message`` unless ``condition`` holds."""
    if not condition:
        raise UserError(message)
