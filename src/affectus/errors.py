"""One exception type for every user-facing failure.

Anything a user can cause (a bad file, a wrong key, a bad config value) raises `AffectusError`
with a one-line message naming the file / split / key and what was expected. The CLI turns it
into that line on stderr and exit code 2; library users catch it like any exception.
"""


class AffectusError(Exception):
    """A user-facing error: its message is one line that says what is wrong and where."""

    exit_code = 2
