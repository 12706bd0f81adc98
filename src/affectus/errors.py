"""One exception type for every user-facing failure.

Anything a user can cause (a bad file, a wrong key, a bad config value) raises `AffectusError`
with a one-line message naming the file / split / key and what was expected. The CLI turns it
into that line on stderr and exit code 2; library users catch it like any exception.
"""


class AffectusError(Exception):
    """A user-facing error: its message is one line that says what is wrong and where."""

    exit_code = 2


def suggest(name: str, choices) -> str:
    """' (did you mean 'x'?)' for the closest of `choices` to a mistyped `name`, else ''.

    For error messages: `f"unknown preset {name!r}{suggest(name, presets)}"`. Case is ignored in
    the comparison (`MOSI` -> `mosi`); the suggestion is spelled as in `choices`."""
    import difflib

    options = {str(c).lower(): str(c) for c in choices}
    close = difflib.get_close_matches(str(name).lower(), list(options), n=1, cutoff=0.6)
    return f" (did you mean {options[close[0]]!r}?)" if close else ""


class SettingError(AffectusError):
    """A config value outside its range. `keys` names the setting first (`model.heads`), then any other
    setting the rule involves (`model.d`), so an experiment spec can point at the line that set it."""

    def __init__(self, key: str, value: object, expected: str, *also: str) -> None:
        super().__init__(f"{key} = {value!r}: expected {expected}")
        self.keys = (key, *also)
