"""A cohort's cases on a Ray cluster: one actor per worker holds the model (``num_gpus`` of a GPU each when
asked), one case in flight per actor; an actor that dies is replaced and its case given out again.
Ray is optional (``pip install xaiexplain[cohort]``)."""
from __future__ import annotations

import os

from ..errors import XAIError

LOOPBACK_ONLY = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"  # "0": Ray's servers listen on 127.0.0.1, not on every address
INSTALL = "pip install 'xaiexplain[cohort]' (or pip install ray) on this machine and the cluster's"


class CaseWorker:
    """The actor: the model loaded once, then :func:`~.run.run_case` for each case given."""

    def __init__(self, job):
        self.job, self.model = job, job.load()

    def run(self, case, key, attempt):
        from .work import run_case

        return run_case(self.job, self.model, case, key, attempt)


def connect(address: str, workers: int, cpus: float):
    """Join the cluster at ``address`` ('auto': the one this machine belongs to), or with 'local' start one
    here (listening on 127.0.0.1 only, stopped with the run). Returns (ray, started_here)."""
    if address == "local":  # Ray binds a one-machine cluster to 127.0.0.1 only when told it is not a cluster
        os.environ.setdefault(LOOPBACK_ONLY, "0")
    try:
        import ray
    except ImportError:
        raise XAIError("--ray needs Ray, which is not installed", INSTALL) from None
    if ray.is_initialized():
        return ray, False
    try:
        if address == "local":
            ray.init(num_cpus=max(1, int(workers * cpus)), include_dashboard=False, _node_ip_address="127.0.0.1",
                     log_to_driver=False, configure_logging=False)
        else:
            ray.init(address=address, log_to_driver=False, configure_logging=False)
    except (ConnectionError, RuntimeError, ValueError) as err:
        raise XAIError(f"cannot reach the Ray cluster at '{address}': {str(err).splitlines()[0]}",
                       "start it (ray start --head) or give its address, e.g. --ray 10.0.0.5:6379; "
                       "--ray local starts one on this machine") from None
    return ray, True


def run_on_ray(job, pending, tally, *, address: str, workers: int, gpus: float, cpus: float, retries: int) -> None:
    from .schedule import lost_case

    ray, started = connect(address, workers, cpus)
    try:
        available = ray.cluster_resources()
        if gpus and available.get("GPU", 0) < gpus:
            raise XAIError(f"--gpus-per-worker {gpus} was asked but the Ray cluster has "
                           f"{available.get('GPU', 0):g} GPUs", "drop --gpus-per-worker, or add GPU nodes")
        if available.get("CPU", 0) < cpus:
            raise XAIError(f"each worker asks for {cpus:g} CPUs but the Ray cluster has {available.get('CPU', 0):g}",
                           "lower --cpus-per-worker")
        actor = ray.remote(num_cpus=cpus, num_gpus=gpus, max_restarts=0)(CaseWorker)
        pool = [actor.remote(job) for _ in range(max(1, min(workers, len(pending))))]
        flying = {}  # ObjectRef -> (actor index, (case, key, attempt))
        while pending or flying:
            busy = {number for number, _ in flying.values()}
            for number in range(len(pool)):
                if number not in busy and pending:
                    item = pending.popleft()
                    flying[pool[number].run.remote(*item)] = (number, item)
            ready, _ = ray.wait(list(flying), num_returns=1, timeout=1.0)
            for ref in ready:
                number, (case, key, attempt) = flying.pop(ref)
                try:
                    tally.add(ray.get(ref), job.out)
                except ray.exceptions.RayActorError:  # the actor's process died (killed, out of memory)
                    lost_case(job, case, key, attempt, retries, tally, pending)
                    pool[number] = actor.remote(job)
    finally:
        if started:
            ray.shutdown()
