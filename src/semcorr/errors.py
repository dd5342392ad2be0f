"""Errors a user can fix (bad config, missing weights, bad inputs): the CLIs print them as one line."""


class SemcorrError(Exception):
    """Base of errors caused by the user's input, reported without a traceback."""


class ConfigError(SemcorrError, ValueError):
    """A configuration that cannot be built; the message says what the valid choices are."""


class DataError(SemcorrError, ValueError):
    """A data file that exists but cannot be used (malformed, unreadable); the message names it."""


class InputError(SemcorrError, ValueError):
    """A bad image, mask or point list given to the match command."""


class NumericalError(SemcorrError, FloatingPointError):
    """A non-finite value (NaN / Inf) where a finite one is needed: features entering the matcher,
    a matcher's scores, a training loss. The message says where (image, pair, step)."""


class TrainingDiverged(NumericalError):
    """Training stopped because a loss, plan or feature went non-finite; names the step and the
    last good checkpoint."""


def first_sentence(err: BaseException, limit: int = 100) -> str:
    """The first sentence of an exception's message on one line (a library's multi-paragraph
    message shortened for a one-line error)."""
    text = " ".join(str(err).split())
    text = text.split(". ")[0].rstrip(".")
    return (text[: limit - 3] + "...") if len(text) > limit else (text or "no detail")
