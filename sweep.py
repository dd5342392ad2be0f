"""Run a grid of ablations: ``python sweep.py <name or file.yaml> [key=value ...]``.

Thin wrapper around :mod:`semcorr.cli.sweep`; ``python sweep.py --help`` describes sweep files.
"""

from semcorr.cli.sweep import main

if __name__ == "__main__":
    raise SystemExit(main())
