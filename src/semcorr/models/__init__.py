from semcorr.models.module import CorrespondenceModule

__all__ = ["CorrespondenceModule"]
