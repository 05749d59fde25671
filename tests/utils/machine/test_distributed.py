"""Two CPU processes with gloo: DistributedDataParallel training and sharded evaluation."""
from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from tests.fixtures.helpers import REPO, TINY_FLAGS
from tests.fixtures.layouts import make_mvtec

# every test here drives the command line, a subprocess or a trained run
pytestmark = pytest.mark.slow


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world: int, port: int, data: str, logs: str, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      WORLD_SIZE=str(world), LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    from data.datasets import TestDataset
    from models.transparency import TransparencyProcess
    from utils.Argparser import parse_args
    from utils.evaluation.loop import EvalSettings, evaluate
    from utils.machine.distributed import SINGLE, init_distributed, shutdown
    from utils.run.paths import RunPaths
    from utils.training.trainer import train_category

    args = parse_args(["-c", "train", "-r", "ddp", "-d", data, "--category", "bottle", "--log-path", logs,
                       "--epoch-num", "2", *TINY_FLAGS])
    dist, device = init_distributed("cpu")
    try:
        outcome = train_category(args, "bottle", device, RunPaths(logs, "ddp"), dist)
        net = outcome.model.eval()
        proc = TransparencyProcess(args.diffusion_num_steps, "rgb")
        test = TestDataset("mvtec", data, "bottle", "rgb", args.img_size)
        sharded = evaluate(net, proc, test, device, EvalSettings(batch_size=2), progress=False, dist=dist)
        single = evaluate(net, proc, test, device, EvalSettings(batch_size=3), progress=False, dist=SINGLE)
        torch.save({"params": {k: v.detach().clone() for k, v in net.state_dict().items()},
                    "sharded": (sharded.scores, sharded.paths, sharded.metrics),
                    "single": (single.scores, single.paths, single.metrics)}, f"{out}/rank{rank}.pt")
    finally:
        shutdown(dist)


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return make_mvtec(tmp_path_factory.mktemp("mvtec"), n_train=8, n_test_good=3, defects=("crack",),
                      n_per_defect=2, size=32)


def test_ddp_training_keeps_ranks_identical_and_sharded_eval_is_exact(data, tmp_path):
    logs, out = tmp_path / "logs", tmp_path / "out"
    out.mkdir()
    mp.spawn(_worker, args=(2, _free_port(), str(data), str(logs), str(out)), nprocs=2, join=True)
    r0, r1 = (torch.load(out / f"rank{r}.pt", weights_only=False) for r in (0, 1))
    for k in r0["params"]:
        assert torch.equal(r0["params"][k], r1["params"][k]), k
    models = logs / "ddp" / "models"
    assert sorted(p.name for p in models.glob("*.pkl")) == ["bottle_model.pkl"]
    assert len(list(models.glob("bottle_state_*.pt"))) == 1
    saved = torch.load(models / "bottle_model.pkl", weights_only=True)
    for k, v in r0["params"].items():
        assert torch.equal(saved["model." + k], v), k
    for r in (r0, r1):
        s_scores, s_paths, s_metrics = r["sharded"]
        scores, paths, metrics = r["single"]
        assert s_paths == paths
        torch.testing.assert_close(torch.as_tensor(s_scores), torch.as_tensor(scores), atol=1e-6, rtol=0)
        for k, v in metrics.items():
            assert s_metrics[k] == pytest.approx(v, abs=1e-9), k


def test_torchrun_cli_trains_with_two_processes(data, tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
         str(REPO / "Experiment.py"), "-c", "train", "-r", "tr", "-d", str(data), "--category", "bottle",
         "--log-path", str(tmp_path), "--epoch-num", "1", *TINY_FLAGS],
        cwd=REPO, capture_output=True, text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "2 processes" in proc.stdout
    assert (tmp_path / "tr" / "models" / "bottle_model.pkl").exists()
