"""Matchers: feature maps -> (B, Ns, Nt) scores, and keypoint transfer from the scores."""

from dataclasses import dataclass, field

from semcorr.config import GroupConfig, TransferConfig, build
from semcorr.matchers.base import Matcher, MatchResult, cosine_similarity


@dataclass
class MatcherConfig(GroupConfig):
    """Fields every matcher config has; ``transfer`` is read by the pipeline, not the matcher."""

    transfer: TransferConfig = field(default_factory=TransferConfig)


def build_matcher(cfg) -> Matcher:
    return build("matcher", cfg, exclude=("transfer",))


from semcorr.matchers import nearest  # noqa: E402,F401  (registers "nn")

__all__ = ["Matcher", "MatchResult", "MatcherConfig", "build_matcher", "cosine_similarity"]
from semcorr.matchers import ot  # noqa: E402,F401  (registers "ot")
from semcorr.matchers import gwot  # noqa: E402,F401  (registers "gwot")
