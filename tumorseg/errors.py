"""The project's own errors: bad params, bad input files, failed downloads, unusable training runs.

Each carries a message that names the file or key and the fix; the stages print it as one
line on stderr and exit with status 1 (stages/__init__.py). Any other exception is a bug and
keeps its traceback.
"""


class ProjectError(Exception):
    """An error the user can fix from its message alone."""


class InputError(ProjectError, ValueError):
    """Missing or inconsistent inputs (stage inputs, a model file, a slice, an option), reported before
    anything is written."""
