"""The one exception type users see: a single line naming the problem and the fix."""


class XAIError(Exception):
    """A user-facing error. ``str(err)`` is one line: what is wrong, then what to do.

    The line is kept apart from ``args``: torch's graph interpreter (which runs a
    ``torch.export`` program) appends its own node dump and traceback to the
    ``args`` of any exception passing through it, which must not reach the user.
    """

    def __init__(self, problem: str, fix: str = ""):
        message = problem.rstrip(". ") + "."
        if fix:
            fix = fix.rstrip(". ")
            message += " " + fix[:1].upper() + fix[1:] + "."
        self.line = " ".join(message.split())
        super().__init__(self.line)

    def __str__(self) -> str:
        return self.line

    def __reduce__(self):  # the one line survives pickling (worker processes, Ray)
        return (_rebuild, (self.line,))


def _rebuild(line: str) -> XAIError:
    error = XAIError.__new__(XAIError)
    error.line = line
    Exception.__init__(error, line)
    return error


CANCELLED = "cancelled: no output was written"  # what Ctrl-C says, at any moment of a command
