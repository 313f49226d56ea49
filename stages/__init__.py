import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # keep TensorFlow's start-up chatter out of stage logs

from tumorseg.errors import ProjectError  # noqa: E402  (after the line above: tumorseg may load TensorFlow)


def run(name, main):
    """Run a stage's main(): the project's own errors (bad params, bad files, a failed download, an unusable
    run) end it with their message on stderr and exit status 1; any other error keeps its traceback."""
    try:
        main()
    except ProjectError as error:
        print(f"{name}: {error}", file=sys.stderr)
        raise SystemExit(1) from None
