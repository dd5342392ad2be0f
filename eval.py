"""Evaluate semantic correspondence: ``python eval.py data=pf_willow backbone=dsift matcher=nn``.

Thin wrapper around :mod:`semcorr.cli.eval`; ``python eval.py --help`` lists the options.
"""

from semcorr.cli.eval import main

if __name__ == "__main__":
    raise SystemExit(main())
