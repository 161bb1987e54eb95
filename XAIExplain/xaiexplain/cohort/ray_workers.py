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

    def __init__(self, job, threads: int):
        import torch

        torch.set_num_threads(threads)  # the CPUs Ray gave this actor, not every core of its machine
        self.job, self.model = job, job.load()

    def run(self, case, key, attempt):
        from .work import run_case

        return run_case(self.job, self.model, case, key, attempt)


class RayCluster:
    """This run's hold on a Ray cluster, checked for the resources the workers ask before anything runs:
    joined at ``address`` ('auto': the one this machine belongs to), or with 'local' started here (listening
    on 127.0.0.1 only, stopped by :meth:`close`)."""

    def __init__(self, address: str, *, workers: int, cpus: float, gpus: float):
        if address == "local":  # Ray binds a one-machine cluster to 127.0.0.1 only when told it is not a cluster
            os.environ.setdefault(LOOPBACK_ONLY, "0")
        try:
            import ray
        except ImportError:
            raise XAIError("--ray needs Ray, which is not installed", INSTALL) from None
        self.ray, self.started, self.cpus, self.gpus = ray, False, cpus, gpus
        if not ray.is_initialized():
            try:
                if address == "local":
                    ray.init(num_cpus=max(1, int(workers * cpus)), include_dashboard=False,
                             _node_ip_address="127.0.0.1", log_to_driver=False, configure_logging=False)
                else:
                    ray.init(address=address, log_to_driver=False, configure_logging=False)
            except (ConnectionError, RuntimeError, ValueError) as err:
                raise XAIError(f"cannot reach the Ray cluster at '{address}': {str(err).splitlines()[0]}",
                               "start it (ray start --head) or give its address, e.g. --ray 10.0.0.5:6379; "
                               "--ray local starts one on this machine") from None
            self.started = True
        try:
            self._check(ray.cluster_resources())
        except XAIError:
            self.close()
            raise

    def _check(self, available: dict) -> None:
        if self.gpus and available.get("GPU", 0) < self.gpus:
            raise XAIError(f"--gpus-per-worker {self.gpus:g} was asked but the Ray cluster has "
                           f"{available.get('GPU', 0):g} GPUs", "drop --gpus-per-worker, or add GPU nodes")
        if available.get("CPU", 0) < self.cpus:
            raise XAIError(f"each worker asks for {self.cpus:g} CPUs but the Ray cluster has "
                           f"{available.get('CPU', 0):g}", "lower --cpus-per-worker")

    def close(self) -> None:
        if self.started:
            self.ray.shutdown()
            self.started = False

    def run(self, job, pending, tally, *, workers: int, retries: int) -> None:
        """Run ``pending`` ((case, key, attempt) in order) on ``workers`` actors."""
        from .schedule import lost_case

        ray = self.ray
        actor = ray.remote(num_cpus=self.cpus, num_gpus=self.gpus, max_restarts=0)(CaseWorker)
        threads = max(1, int(self.cpus))
        pool = [actor.remote(job, threads) for _ in range(max(1, min(workers, len(pending))))]
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
                    pool[number] = actor.remote(job, threads)
