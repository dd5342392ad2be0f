"""Command-line entry points (``eval.py``, ``train.py``, ``semcorr-match``)."""
