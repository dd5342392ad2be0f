"""Train semantic correspondence: ``python train.py data=synthetic backbone=dinov2_vits14 ...``.

Thin wrapper around :mod:`semcorr.cli.train`; ``python train.py --help`` lists the options and
``docs/training.md`` explains them.
"""

from semcorr.cli.train import main

if __name__ == "__main__":
    raise SystemExit(main())
