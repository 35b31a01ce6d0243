"""Multi-host runs: one jaxlm process per host, joined by `jax.distributed` into one set of devices.

    TPU VM (one host or a pod slice)   automatic: jax finds the workers from the TPU metadata
    SLURM (srun), Open MPI (mpirun)    automatic: jax reads the coordinator, count and id from their environment
    GPU cluster, tests on one machine  explicit: --coordinator HOST:PORT --num-processes N --process-id I
                                       (or JAXLM_COORDINATOR, JAXLM_NUM_PROCESSES, JAXLM_PROCESS_ID)

After `initialize`, every process runs the same program: it reads only its shard of the data
(`sharding.host_data_shard`), all processes write and restore the orbax checkpoints together, and only
process 0 logs at INFO level and writes metrics, plots and the progress bar. A SIGTERM seen by one process
reaches the others through jax's preemption service (see `train._Preemption`).
"""

from __future__ import annotations

import argparse
import importlib.util
import logging
import os
import socket
import time

ENV = {"coordinator": "JAXLM_COORDINATOR", "num_processes": "JAXLM_NUM_PROCESSES", "process_id": "JAXLM_PROCESS_ID"}
TIMEOUT_ENV = "JAXLM_INIT_TIMEOUT"


def add_flags(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("multi-host (automatic on TPU VMs)")
    g.add_argument("--coordinator", help=f"HOST:PORT of process 0 (or ${ENV['coordinator']})")
    g.add_argument("--num-processes", type=int, help=f"processes in the run (or ${ENV['num_processes']})")
    g.add_argument("--process-id", type=int, help=f"this process, 0 .. N-1 (or ${ENV['process_id']})")
    g.add_argument("--init-timeout", type=int, help=f"seconds to wait for the other processes, default 300 "
                                                    f"(or ${TIMEOUT_ENV})")


def on_tpu_vm() -> bool:
    """Whether this machine has TPU chips (a Cloud TPU VM)."""
    from jax._src import hardware_utils  # jax's own TPU detection (the PCI ids of each TPU generation)

    return hardware_utils.num_available_tpu_chips_and_device_id()[0] > 0


def skip_absent_tpu() -> None:
    """Off a TPU VM, keep jax from starting libtpu (installed by the `tpu` and `test` extras, for
    `jaxlm compile`): it would look for TPU metadata and print errors. A JAX_PLATFORMS already set is kept."""
    if os.environ.get("JAX_PLATFORMS") or importlib.util.find_spec("libtpu") is None or on_tpu_vm():
        return
    import jax

    gpu = any(importlib.util.find_spec(f"jax_cuda{v}_plugin") for v in (12, 13))
    jax.config.update("jax_platforms", "cuda,cpu" if gpu else "cpu")


def initialize(coordinator: str | None = None, num_processes: int | None = None,
               process_id: int | None = None, init_timeout: int | None = None) -> None:
    """Join the run's processes, from the flags, else the JAXLM_* environment, else the TPU VM's metadata, else
    a SLURM or Open MPI job's environment (`detected_cluster`).

    Without any of them, this is a single-process run and nothing happens. Call it before
    anything touches a jax device. (jax is imported here, not with the module: `jaxlm --help` stays quick.)
    A process other than 0 first waits `init_timeout` seconds at most for the coordinator's port to answer and
    stops with one line if it never does (jax's own client would abort the process with a stack trace); jax
    then gets as long again to join. Process 0 waits as long for the others; if they never come, jax aborts it,
    naming the deadline.
    """
    import jax

    given = {"coordinator": coordinator, "num_processes": num_processes, "process_id": process_id}
    for name, env in ENV.items():
        if given[name] is None and os.environ.get(env):
            given[name] = os.environ[env] if name == "coordinator" else _int(env, os.environ[env])
    if any(v is not None for v in given.values()):
        missing = [f"--{name.replace('_', '-')} (or ${ENV[name]})" for name, v in given.items() if v is None]
        if missing:
            raise ValueError(f"multi-host: also give {' and '.join(missing)}")
        n, i = given["num_processes"], given["process_id"]
        if not 0 <= i < n:
            raise ValueError(f"--process-id {i}: expected 0 <= id < --num-processes {n}")
        host, _, port = given["coordinator"].rpartition(":")
        host = host.removeprefix("[").removesuffix("]")  # [IPv6]:PORT
        if not host or not port.isdigit():
            raise ValueError(f"--coordinator {given['coordinator']}: expected HOST:PORT")
        init_timeout = _init_timeout(init_timeout)
        if i != 0:
            _wait_for(host, int(port), init_timeout, f"multi-host: process {i} of {n}")
        try:
            jax.distributed.initialize(coordinator_address=given["coordinator"], num_processes=n, process_id=i,
                                       initialization_timeout=init_timeout)
        except RuntimeError as e:  # the coordinator unreachable, the others never came: one line, not a traceback
            raise OSError(f"multi-host: process {i} of {n} could not join the run at --coordinator "
                          f"{given['coordinator']}: {str(e).strip().splitlines()[0][:300]}") from e
    elif on_tpu_vm():
        jax.distributed.initialize(initialization_timeout=_init_timeout(init_timeout))
    elif cluster := detected_cluster():  # srun / mpirun: jax reads the coordinator, count and id from their env
        try:
            jax.distributed.initialize(cluster_detection_method=cluster,
                                       initialization_timeout=_init_timeout(init_timeout))
        except RuntimeError as e:
            raise OSError(f"multi-host: could not join the {cluster} job's processes: "
                          f"{str(e).strip().splitlines()[0][:300]}") from e
        if jax.process_index() == 0:
            logging.getLogger(__name__).info("multi-host: joined the %d processes of this %s job",
                                             jax.process_count(), cluster)
    else:
        return
    if jax.process_index() != 0:  # one voice: process 0 reports, the others only warn
        logging.getLogger().setLevel(logging.WARNING)


def detected_cluster() -> str | None:
    """'slurm' or 'ompi' when this process is one of several tasks that SLURM (srun) or Open MPI (mpirun)
    launched, else None (a job of one task runs alone; TPU VMs are found apart). Without this, each task of an
    srun would train alone, all of them into one workdir."""
    from jax._src.clusters import OmpiCluster, SlurmCluster  # jax's own detection, as jax.distributed uses it

    for env in (SlurmCluster, OmpiCluster):
        if env.is_env_present() and env.get_process_count() > 1:
            return env.name
    return None


def sync(name: str) -> None:
    """Wait until every process gets here (a no-op with one process)."""
    import jax

    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)


def all_agree(ok: bool) -> bool:
    """True on every process when `ok` is true on every process (each passes its own): for decisions that
    must not differ between hosts, e.g. whether a checkpoint can be read."""
    import jax

    if jax.process_count() == 1:
        return ok
    import numpy as np
    from jax.experimental import multihost_utils

    return bool(np.all(multihost_utils.process_allgather(np.int32(ok))))  # int: gloo mis-sizes a bool


def _init_timeout(given: int | None) -> int:
    """--init-timeout, else $JAXLM_INIT_TIMEOUT, else 300 s (jax's default)."""
    where = "--init-timeout"
    if given is None and os.environ.get(TIMEOUT_ENV):
        where, given = f"${TIMEOUT_ENV}", _int(TIMEOUT_ENV, os.environ[TIMEOUT_ENV])
    if given is not None and given <= 0:
        raise ValueError(f"{where}={given}: expected a positive number of seconds")
    return 300 if given is None else given


def _wait_for(host: str, port: int, timeout: float, who: str) -> None:
    """Until `host:port` accepts a TCP connection; OSError after `timeout` seconds (at once for a host name
    that does not exist)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            socket.create_connection((host, port), timeout=min(5.0, timeout)).close()
            return
        except OSError as e:
            if isinstance(e, socket.gaierror) and e.errno == socket.EAI_NONAME:  # not a transient DNS failure
                raise OSError(f"{who}: --coordinator {host}:{port}: the host name does not resolve") from None
            if time.monotonic() >= deadline:
                raise OSError(f"{who} could not reach the coordinator at --coordinator {host}:{port} within "
                              f"{timeout:g} s ({e.strerror or e}): is process 0 running there? "
                              "(--init-timeout sets the wait)") from None
            time.sleep(0.5)


def _int(env: str, text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise ValueError(f"${env}={text!r}: expected an integer") from None
