"""The one exception type users see: a single line naming the problem and the fix."""


class XAIError(Exception):
    """A user-facing error. ``str(err)`` is one line: what is wrong, then what to do."""

    def __init__(self, problem: str, fix: str = ""):
        message = problem.rstrip(". ") + "."
        if fix:
            fix = fix.rstrip(". ")
            message += " " + fix[:1].upper() + fix[1:] + "."
        super().__init__(" ".join(message.split()))
