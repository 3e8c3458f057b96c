"""The one exception the data pipeline raises for bad input.

Every `DataError` message is a single line that names the file and line, or the config
option, that is wrong and says what to do about it. A trainer can catch `DataError` and
print `str(error)`: the user then sees that line instead of a stack trace.
"""


class DataError(ValueError):
    """Bad data or a bad data option; the message says which and how to fix it."""
