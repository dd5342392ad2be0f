"""What a run needs to know about the processes it shares (Lightning's distributed strategies).

A distributed run is one program started once per device: by Lightning itself (``strategy=ddp``
on one node re-launches the command line as ``LOCAL_RANK=1..`` subprocesses), by ``srun`` (SLURM)
or by ``torchrun``. Every process builds the same config and model; only global rank 0 writes
files and prints (see ``docs/distributed.md``).

- :func:`launch_rank_is_zero`: before the Trainer exists, whether the launcher started this
  process as global rank 0 (afterwards ``trainer.is_global_zero`` says so);
- :func:`launch_out_dir`: a default ``out_dir`` that every process of one launch derives alike;
- :func:`gather_objects`: every rank's picklable object, on every rank (a no-op in one process).
"""

from __future__ import annotations

import os
from typing import Any, List, Optional

# Set by the process that chose the default out_dir, for the processes Lightning launches from it.
DEFAULT_OUT_DIR_ENV = "SEMCORR_DEFAULT_OUT_DIR"
# Rank variables of the launchers Lightning supports (its own, torchrun, SLURM, LSF).
RANK_ENV = ("RANK", "LOCAL_RANK", "NODE_RANK", "SLURM_PROCID", "JSM_NAMESPACE_RANK")


def launch_rank_is_zero() -> bool:
    """Whether this process is global rank 0 as far as its launcher's environment tells.

    Any non-zero rank variable (:data:`RANK_ENV`) means another rank; a process started by hand
    has none and is rank 0. Lightning's own ranks (``trainer.global_rank``) agree with this once
    the Trainer is built; this is for what happens before (saving the config, logging).
    """
    for key in RANK_ENV:
        value = os.environ.get(key, "0")
        if value.strip().lstrip("-").isdigit() and int(value) != 0:
            return False
    return True


def launch_out_dir() -> Optional[str]:
    """A default ``out_dir`` that every process of one launch agrees on, or None.

    - ``$SEMCORR_DEFAULT_OUT_DIR``: set by the first process for the copies Lightning starts from
      it (``strategy=ddp`` on one node; see :func:`semcorr.cli.common.share_out_dir`);
    - ``runs/slurm-<job>.<step>`` in an ``srun`` step of several tasks;
    - ``runs/torchrun-<run id>`` under ``torchrun`` with a rendezvous id (``--rdzv-id``,
      ``--standalone``).
    None elsewhere: the caller picks a timestamp (a process started by hand).
    """
    inherited = os.environ.get(DEFAULT_OUT_DIR_ENV)
    if inherited:
        return inherited
    if int(os.environ.get("SLURM_NTASKS", "1") or 1) > 1 and "SLURM_STEP_ID" in os.environ:
        return f"runs/slurm-{os.environ.get('SLURM_JOB_ID', 'job')}.{os.environ['SLURM_STEP_ID']}"
    run_id = os.environ.get("TORCHELASTIC_RUN_ID", "none")
    if int(os.environ.get("WORLD_SIZE", "1") or 1) > 1 and run_id not in ("", "none"):
        return f"runs/torchrun-{run_id}"
    return None


def world_size() -> int:
    """Processes in the default process group (1 when none is set up)."""
    import torch  # deferred: the CLIs read this module before parsing their arguments

    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_world_size()
    return 1


def gather_objects(obj: Any) -> List[Any]:
    """``[obj of rank 0, obj of rank 1, ...]`` on every rank; ``[obj]`` without a process group.

    A collective: every rank must call it, in the same order. Objects are pickled (tensors are
    fine; keep them on the CPU)."""
    n = world_size()
    if n == 1:
        return [obj]
    import torch

    out: List[Any] = [None] * n
    torch.distributed.all_gather_object(out, obj)
    return out
