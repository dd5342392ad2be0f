"""Matchers: feature maps -> (B, Ns, Nt) scores, and keypoint transfer from the scores.

Kinds: ``nn`` (:mod:`.nearest`), ``ot`` (:mod:`.ot`, entropic OT on :mod:`.sinkhorn`) and
``gwot`` (:mod:`.gwot`); importing this package registers them.
"""

from semcorr.matchers import gwot, nearest, ot  # noqa: F401  (register the kinds)
from semcorr.matchers.base import Matcher, MatcherConfig, MatchResult, cosine_similarity
from semcorr.registry import build


def build_matcher(cfg) -> Matcher:
    """The matcher of a ``matcher`` config section."""
    return build("matcher", cfg)


__all__ = ["Matcher", "MatchResult", "MatcherConfig", "build_matcher", "cosine_similarity"]
