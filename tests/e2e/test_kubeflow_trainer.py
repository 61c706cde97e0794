"""A TrainJob's pods (k8s/overlays/trainjob) learn their place in the run only from the variables the
Kubeflow Trainer's torch plugin injects into the `torch-distributed` runtime's container: PET_NNODES,
PET_NPROC_PER_NODE, PET_NODE_RANK, PET_MASTER_ADDR, PET_MASTER_PORT. Two "nodes" run here as two
processes with exactly those, and none of the Indexed Job's names (NNODES, NODE_RANK, MASTER_*,
JOB_COMPLETION_INDEX).
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys

import pytest

from conftest import base_env, tiny_config, write_yaml

# What the multinode overlay's Indexed Job sets instead: kept out, so only the PET_* names can work.
INDEXED_JOB_NAMES = ("NNODES", "NODE_RANK", "NPROC_PER_NODE", "MASTER_ADDR", "MASTER_PORT", "JOB_COMPLETION_INDEX")


def trainer_env(**pet: str) -> dict[str, str]:
    env = {k: v for k, v in base_env().items() if k not in INDEXED_JOB_NAMES and not k.startswith("PET_")}
    return env | {f"PET_{name}": value for name, value in pet.items()}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.parametrize("nproc, expected", [("1", 1), ("2", 2), ("auto", 1), ("gpu", 1)])
def test_plan_reads_the_runtime_environment(monkeypatch, nproc, expected):
    """`auto`/`gpu` (torchrun's words, which a runtime may pass on) mean one worker per GPU: 1 here."""
    from job.cli import config_loader
    from job.training import launch

    for name in INDEXED_JOB_NAMES:
        monkeypatch.delenv(name, raising=False)
    env = trainer_env(NNODES="3", NPROC_PER_NODE=nproc, NODE_RANK="2", MASTER_ADDR="tj-node-0-0.tj", MASTER_PORT="29400")
    for name, value in env.items():
        if name.startswith("PET_"):
            monkeypatch.setenv(name, value)
    plan = launch.plan(config_loader.load(None, (), use_env=False))
    assert (plan.nnodes, plan.node_rank, plan.nproc_per_node, plan.master_addr, plan.master_port) == (3, 2, expected, "tj-node-0-0.tj", 29400)


@pytest.mark.slow
def test_two_trainjob_nodes_train_together(s3_server, bucket, tmp_path):
    cfg = tiny_config(f"s3://{bucket}/runs")
    cfg["training"].update({"num_train_epochs": 2, "logging_steps": 1, "per_device_train_batch_size": 8})
    path = write_yaml(tmp_path / "trainjob.yaml", cfg)
    port = str(_free_port())
    procs = []
    for rank in (0, 1):
        env = trainer_env(NNODES="2", NPROC_PER_NODE="1", NODE_RANK=str(rank), MASTER_ADDR="127.0.0.1", MASTER_PORT=port)
        env |= {**s3_server.env(), "FINETUNE_RUN_ID": "trainjob", "FINETUNE_OUTPUT__WORK_DIR": str(tmp_path / f"node{rank}")}
        procs.append(subprocess.Popen([sys.executable, "-m", "job", "run", "--config", str(path)], env=env, cwd=tmp_path,
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    outputs = [p.communicate(timeout=600) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [o[1][-2000:] for o in outputs]
    for rank in (0, 1):
        assert f"node {rank} of 2, 1 worker(s) here, world size 2, rendezvous 127.0.0.1:{port}" in outputs[rank][1]
    metrics = json.loads(s3_server.client().get_object(Bucket=bucket, Key="runs/trainjob/metrics.json")["Body"].read())
    assert metrics["world_size"] == 2
