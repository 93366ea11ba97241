"""Many processes (hosts) on one restoration: joining them with `jax.distributed`, and
waiting for one another.

Under SLURM (``srun``, several tasks) and Open MPI (``mpirun``, several ranks) the processes
find one another from the environment; elsewhere every process is given ``-coordinator
HOST:PORT -num_processes N -process_id I``. Each restores its share of the segments on its
own devices into a store on a file system they share; the first writes the output.
"""

from __future__ import annotations

import logging
import os
import re

import jax
import typer

import eprjax

log = logging.getLogger("eprjax")

_ADDRESS = re.compile(r"^\[?[A-Za-z0-9_.:-]+\]?:\d{1,5}$")


def cluster_environment() -> str | None:
    """The launcher that started several processes of this program, if any."""
    if int(os.environ.get("SLURM_STEP_NUM_TASKS") or os.environ.get("SLURM_NTASKS") or 1) > 1 and "SLURM_JOB_ID" in os.environ:
        return "SLURM"
    if int(os.environ.get("OMPI_COMM_WORLD_SIZE") or 1) > 1:
        return "Open MPI"
    return None


_JOINED: list[tuple[int, int]] = []  # once joined, a process stays joined (a run of several files joins once)


def join_cluster(coordinator: str | None, num_processes: int | None, process_id: int | None) -> tuple[int, int]:
    """Join the other processes of this run, before anything asks JAX for a device; a
    process that has joined already keeps its place.
    Returns (this process's index, how many there are); (0, 1) alone."""
    if _JOINED:
        return _JOINED[0]
    given = (coordinator, num_processes, process_id)
    if any(v is not None for v in given):
        if any(v is None for v in given):
            raise typer.BadParameter("give -coordinator, -num_processes and -process_id together", param_hint="-coordinator")
        assert coordinator is not None and num_processes is not None and process_id is not None
        if not _ADDRESS.match(coordinator):
            raise typer.BadParameter(f"expected HOST:PORT, got {coordinator!r}", param_hint="-coordinator")
        if num_processes < 1:
            raise typer.BadParameter(f"must be >= 1, got {num_processes}", param_hint="-num_processes")
        if not 0 <= process_id < num_processes:
            raise typer.BadParameter(f"must be between 0 and {num_processes - 1}, got {process_id}", param_hint="-process_id")
        if num_processes == 1:
            return 0, 1
        kwargs: dict = dict(coordinator_address=coordinator, num_processes=num_processes, process_id=process_id)
        where = f"the coordinator {coordinator}"
    else:
        launcher = cluster_environment()
        if launcher is None:
            return 0, 1
        kwargs, where = {}, f"the other processes ({launcher})"
    jax.config.update("jax_cpu_collectives_implementation", "gloo")  # CPU processes talk over TCP
    try:
        jax.distributed.initialize(**kwargs)
    except Exception as e:  # noqa: BLE001 - JAX raises several kinds, all meaning "could not join"
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise eprjax.EprjaxError(f"cannot join {where}: {first}") from None
    index, count = jax.process_index(), jax.process_count()
    _JOINED.append((index, count))
    log.info("process %d of %d (%d local devices, %d in all)", index + 1, count, len(jax.local_devices()), len(jax.devices()))
    return index, count


def barrier(name: str) -> None:
    """Wait until every process of the run gets here (nothing to wait for alone)."""
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)


def from_first(value: float) -> float:
    """The first process's ``value``, on every process."""
    if jax.process_count() == 1:
        return value
    import numpy as np
    from jax.experimental import multihost_utils

    return float(multihost_utils.broadcast_one_to_all(np.float64(value)))
