"""semcorr: semantic correspondence with DINOv2 features and a Gromov-Wasserstein OT matcher."""

__version__ = "0.1.0"
