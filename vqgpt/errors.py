"""The one exception type for bad user input: scripts print its message on one line and exit 2."""


class UserError(Exception):
    """Bad input (config, path, file) whose message names the problem and the fix, on one line."""

    label = "error"  # the line's prefix
    exit_code = 2
