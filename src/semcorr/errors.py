"""Errors a user can fix (bad config, missing weights, bad inputs): the CLIs print them as one line."""


class SemcorrError(Exception):
    """Base of errors caused by the user's input, reported without a traceback."""


class DataError(SemcorrError, ValueError):
    """A data file that exists but cannot be used (malformed, unreadable); the message names it."""
