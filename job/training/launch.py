"""Starting the workers: one per GPU on this node, joined with the other nodes of the run.

    finetune-job run                                         # one worker per visible GPU (or 1)
    finetune-job run --set distributed.nproc_per_node=2      # two gloo workers on CPU
    NNODES=2 NODE_RANK=1 MASTER_ADDR=job-0.svc MASTER_PORT=29500 finetune-job run   # node 1 of 2

The node's place in the run comes from the environment: NNODES, NODE_RANK (in an Indexed Job it
defaults to JOB_COMPLETION_INDEX), MASTER_ADDR, MASTER_PORT; Kubeflow's PET_* names work too. When
more than one worker is needed, this process becomes torch's elastic agent (what torchrun runs) with a
static rendezvous, and each worker runs `python -m job` with the same arguments. A single worker runs
in this process: no agent, no extra start-up.

On SIGTERM the agent forwards the signal to the workers and gives them
`distributed.shutdown_grace_seconds` to save and upload a checkpoint before killing them.

When one worker fails, the others see their connection to it close in the next collective (gloo's
"Connection closed by peer"). They stop with one line and an exit code of their own (EXIT_PEER_LOST);
every failing worker notes its exit code and the time in a folder the agent gives it, and the agent
reports the worker that failed first and exits with that worker's code (6 stays 6, 10 stays 10).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import socket
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from job.config import JobConfig, env
from job.errors import EXIT_INTERNAL, EXIT_INTERRUPTED, EXIT_PEER_LOST, ConfigError, first_line

log = logging.getLogger(__name__)


@dataclass
class Plan:
    nnodes: int
    node_rank: int
    nproc_per_node: int
    master_addr: str
    master_port: int

    @property
    def world_size(self) -> int:
        return self.nnodes * self.nproc_per_node


def plan(cfg: JobConfig) -> Plan:
    """Where this node stands in the run, from the config and the environment."""
    nnodes = _int("NNODES", "PET_NNODES", default=1)
    node_rank = _int("NODE_RANK", "PET_NODE_RANK", "JOB_COMPLETION_INDEX", default=0)
    nproc = cfg.distributed.nproc_per_node or _nproc_from_env() or _gpus() or 1
    if not 0 <= node_rank < nnodes:
        raise ConfigError(f"node rank {node_rank} is outside 0..{nnodes - 1}", where="NODE_RANK")
    master_addr = env.first_of("MASTER_ADDR", "PET_MASTER_ADDR")
    if nnodes > 1 and not master_addr:
        raise ConfigError("a run on several nodes needs the address of node 0", where="MASTER_ADDR")
    port = _int("MASTER_PORT", "PET_MASTER_PORT", default=0) or (29500 if nnodes > 1 else _free_port())
    return Plan(nnodes, node_rank, nproc, master_addr or "127.0.0.1", port)


def run_workers(p: Plan, argv: list[str], run_id: str, grace_seconds: int) -> int:
    """Run `python -m job ARGV` as this node's workers under torch's elastic agent; return the exit code."""
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    # The agent's own lines ("failed (exitcode: 6) local_rank: 0 ...") would repeat, less clearly, what
    # _first_failure says in one line.
    logging.getLogger("torch.distributed.elastic").setLevel(logging.CRITICAL)
    config = LaunchConfig(
        min_nodes=p.nnodes,
        max_nodes=p.nnodes,
        nproc_per_node=p.nproc_per_node,
        run_id="finetune-job",
        rdzv_backend="static",
        rdzv_endpoint=f"{p.master_addr}:{p.master_port}",
        rdzv_configs={"rank": p.node_rank, "timeout": 900},
        max_restarts=0,
        monitor_interval=0.5,
        shutdown_timeout=grace_seconds,
        start_method="spawn",
    )
    log.info("launch: node %d of %d, %d worker(s) here, world size %d, rendezvous %s:%d",
             p.node_rank, p.nnodes, p.nproc_per_node, p.world_size, p.master_addr, p.master_port)
    os.environ.update(worker_environment(p, run_id))
    failures = Path(tempfile.mkdtemp(prefix="finetune-job-failures-"))
    os.environ[FAILURES] = str(failures)
    try:
        elastic_launch(config, sys.executable)("-m", "job", *argv)
    except ChildFailedError as exc:
        return _first_failure(exc, failures)
    except SignalException:
        return EXIT_INTERRUPTED
    except Exception as exc:  # rendezvous timeout, unreachable node 0, ...
        log.error("launch failed: %s: %s", type(exc).__name__, first_line(exc))
        return EXIT_INTERNAL
    finally:
        shutil.rmtree(failures, ignore_errors=True)
    return 0


FAILURES = "FINETUNE_WORKER_FAILURES"  # the folder where failing workers note how and when


def _first_failure(exc, failures: Path) -> int:
    """The exit code of the worker that failed first, and one line naming it. Workers that only lost
    their connection to it do not count; neither do workers the agent stopped after it."""
    noted = []
    for path in failures.glob("rank-*.json"):
        try:
            noted.append(json.loads(path.read_text()))
        except (OSError, ValueError):
            continue
    causes = sorted((n for n in noted if n["code"] != EXIT_PEER_LOST), key=lambda n: (n["time"], n["rank"]))
    if causes:
        first = causes[0]
        code = first["code"]
        what = f"exit {code}: {first['message']}"
    else:  # killed (no note), or its node's own workers all lost a peer on another node
        rank, failure = exc.get_first_failure()
        lost = failure.exitcode == EXIT_PEER_LOST
        code = EXIT_INTERRUPTED if failure.exitcode <= 0 or lost else failure.exitcode
        first = {"rank": rank}
        what = ("it lost its connection to a worker on another node" if lost
                else f"killed by signal {-failure.exitcode}" if failure.exitcode < 0 else f"exit {failure.exitcode}")
    others = len(exc.failures) - 1
    log.error("launch: worker %d failed first (%s)%s; exit %d", first["rank"], what,
              f", {others} other worker(s) stopped after it" if others > 0 else "", code, extra={"exit_code": code})
    return code


def record_failure(code: int, message: str) -> None:
    """In a launched worker: note this worker's exit code and the time, for its agent."""
    folder = env.get(FAILURES)
    if not folder or code == 0:
        return
    note = {"rank": env.rank(), "code": code, "time": time.time(), "message": message.splitlines()[0][:300] if message else ""}
    try:
        (Path(folder) / f"rank-{note['rank']}.json").write_text(json.dumps(note))
    except OSError:
        pass  # the agent then falls back to torch's own record of the failure


def peer_lost(exc: BaseException) -> bool:
    """Did a collective fail because another worker went away (its connection closed or reset)?"""
    if not env.inside_launched_worker():
        return False
    while exc is not None:
        text = str(exc)
        name = type(exc).__name__
        if name == "DistBackendError" or (isinstance(exc, RuntimeError) and any(
                sign in text for sign in ("Connection closed by peer", "Connection reset by peer", "gloo", "Gloo", "NCCL"))):
            return True
        exc = exc.__cause__ or exc.__context__
    return False


def worker_environment(p: Plan, run_id: str) -> dict[str, str]:
    """What every worker inherits beyond torch's own RANK/LOCAL_RANK/WORLD_SIZE/MASTER_* variables."""
    threads = max(1, (os.cpu_count() or 1) // p.nproc_per_node)
    return {
        "FINETUNE_RUN_ID": run_id,  # generated once here, or every worker would make up its own
        # torchrun would pin every worker to one thread; on CPU that wastes the node's other cores.
        "OMP_NUM_THREADS": env.get("OMP_NUM_THREADS") or str(threads),
        "TOKENIZERS_PARALLELISM": env.get("TOKENIZERS_PARALLELISM") or "false",
    }


def _nproc_from_env() -> int:
    """NPROC_PER_NODE / PET_NPROC_PER_NODE; 0 (one worker per GPU) for torchrun's `auto` and `gpu`,
    which a Kubeflow training runtime may pass on unresolved."""
    if (env.first_of("NPROC_PER_NODE", "PET_NPROC_PER_NODE") or "").lower() in ("auto", "gpu"):
        return 0
    return _int("NPROC_PER_NODE", "PET_NPROC_PER_NODE", default=0)


def _int(*names: str, default: int) -> int:
    value = env.first_of(*names)
    if value is None:
        return default
    try:
        return int(value)
    except ValueError:
        raise ConfigError(f"expected an integer, got {value!r}", where=names[0]) from None


def _gpus() -> int:
    import torch

    return torch.cuda.device_count()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
