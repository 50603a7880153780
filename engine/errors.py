"""The error a user can fix: a bad flag or value, a missing or unreadable file.

The command-line tools show a UserError as one line (`launch.train: error: ...`,
exit status 1) and anything else with its traceback: a ValueError raised inside a
library, or by a bug of ours, is not the user's to fix and should not be hidden.
UserError subclasses ValueError, so code that catches ValueError keeps working.
"""


class UserError(ValueError):
    """A failure the user can fix; its message names the flag, file or value at fault and what to do."""

    # Exception's own constructor, named as such: AutoGraph re-raises an error met while
    # tracing a tf.function with its own type only when the type's __init__ is
    # Exception.__init__ (or one of a few built-ins); otherwise it becomes a StagingError.
    __init__ = Exception.__init__
