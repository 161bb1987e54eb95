"""The ``xaiexplain`` console script: Ctrl-C is a clean stop from the command's first instruction on.

Until :func:`~.main.main` takes over (it turns Ctrl-C into KeyboardInterrupt, so that a run stops
between files), nothing has been written and nothing is open: the process just says so and exits.
``_signal`` (built into the interpreter) rather than ``signal``, whose import (enum) takes long enough
for a Ctrl-C to land in it."""
import _signal
import os
import sys

from ..errors import CANCELLED


def _cancelled_at_start(_signum, _frame):
    sys.stderr.write(CANCELLED + "\n")
    sys.stderr.flush()
    os._exit(130)


_signal.signal(_signal.SIGINT, _cancelled_at_start)

from .main import main  # noqa: E402 (after the handler: importing it is most of the start-up)


def run() -> None:
    code = main()
    # Done (written, or cleaned up): a Ctrl-C from here on would land in the interpreter's shutdown, which
    # puts the default handler back and dies of the signal; there is nothing left to stop.
    _signal.signal(_signal.SIGINT, _signal.SIG_IGN)
    if code == 130:
        # Cancelled, and everything already cleaned up. A KeyboardInterrupt that crossed C++ code (torch's
        # import runs Python snippets through PyRun_String) leaves CPython set to kill itself with SIGINT at
        # exit, whatever the exit code: leave with the code the message promised.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    sys.exit(code)
