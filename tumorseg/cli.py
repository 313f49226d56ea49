"""The one exit convention of every stage and command (python -m stages.NAME, python -m tumorseg.*, the
console scripts tumorseg-*).

- the project's own errors (tumorseg.errors.ProjectError: bad params, bad files, a failed download, an
  unusable run) print one line on stderr, naming the file or parameter and the fix, and exit with 1;
- usage errors (a bad or missing command-line option, reported by argparse) exit with 2;
- a file the machine does not let it write (a read-only folder or file system, no permission, a full
  disk or quota) is the user's to fix too: one line naming the file, exit 1;
- anything else is a bug and keeps its traceback.

A command's main may also return 1 itself (predict: some inputs failed and were skipped).
"""

import errno
import sys
from collections.abc import Callable
from pathlib import Path
from typing import NoReturn

from tumorseg.errors import ProjectError

EXIT_OK, EXIT_ERROR, EXIT_USAGE = 0, 1, 2
# errors of the machine, not of the code: no permission, a read-only file system, no space or quota left
MACHINE_ERRNOS = (errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOSPC, errno.EDQUOT)


def exit_status(name: str, main: Callable[..., int | None], *args: object) -> int:
    """Run main(*args) and return its exit status by the convention; a project error is printed here."""
    try:
        return main(*args) or EXIT_OK
    except ProjectError as error:
        print(f"{name}: error: {error}", file=sys.stderr)
        return EXIT_ERROR
    except SystemExit as stop:  # argparse: 2 for a usage error, 0 after --help
        return stop.code if isinstance(stop.code, int) else EXIT_USAGE
    except OSError as error:
        if error.errno not in MACHINE_ERRNOS:
            raise
        where = error.filename or "a file it writes"
        print(f"{name}: error: {where}: {error.strerror}; check its permissions and the free space there, then "
              "run again.", file=sys.stderr)
        return EXIT_ERROR


def program_name(module: str) -> str:
    """The command as the user typed it, for usage lines: its console script (tumorseg-predict) or
    python -m `module`."""
    called = Path(sys.argv[0]).name
    return called if called.startswith("tumorseg-") else f"python -m {module}"


def run(name: str, main: Callable[[], int | None]) -> NoReturn:
    """The entry point of a stage or command: exit with main()'s status by the convention."""
    sys.exit(exit_status(name, main))
