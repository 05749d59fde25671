"""utils/machine/resources.py: the DataLoader workers that follow from the cores (the --workers
default), and the memory the image cache is measured against."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

import utils.machine.resources as resources
from utils.Argparser import build_parser, parse_args


@pytest.mark.parametrize("cores, processes, expected", [
    (16, 1, 8),   # one per core less one for the training loop (15), at most 8
    (64, 1, 8),
    (4, 1, 3),    # 4 cores: 3 workers and the training loop
    (2, 1, 2),    # at least the CPU's 2
    (1, 1, 2),
    (16, 4, 3),   # torchrun, 4 processes on 16 cores: 4 cores each, 3 workers each
    (16, 2, 7),
])
def test_cuda_takes_one_worker_per_core_less_one_between_two_and_eight(cores, processes, expected):
    assert resources.default_workers("cuda", cores=cores, processes=processes) == expected


def test_the_cpu_keeps_two_workers_whatever_the_cores():
    assert resources.default_workers("cpu", cores=64, processes=1) == 2
    assert resources.default_workers("mps", cores=64, processes=1) == 2


def test_workers_not_given_follow_the_rule_for_the_device_and_help_states_it():
    argv = ["-c", "train", "-r", "r", "-d", "x"]
    assert parse_args(argv + ["--device", "cpu"]).workers == 2
    assert parse_args(argv + ["--device", "cpu", "--workers", "5"]).workers == 5
    assert parse_args(argv + ["--device", "cuda:1"]).workers == resources.default_workers("cuda")
    assert resources.WORKERS_RULE in " ".join(build_parser().format_help().split())


def test_processes_on_this_machine_come_from_torchrun(monkeypatch):
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")
    assert resources.processes_on_this_machine() == 4
    monkeypatch.delenv("LOCAL_WORLD_SIZE")
    assert resources.processes_on_this_machine() == 1


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="/proc/meminfo is Linux's")
def test_available_memory_is_memavailable_or_less_under_a_container_limit(tmp_path, monkeypatch):
    monkeypatch.setattr(resources, "_CGROUP_FILES", ())
    meminfo = {line.split(":")[0]: int(line.split()[1]) * 1024 for line in Path("/proc/meminfo").read_text().splitlines()}
    got = resources.available_memory()
    assert got is not None and abs(got - meminfo["MemAvailable"]) < 256 * 2 ** 20  # it moves as others run
    (tmp_path / "max").write_text("1073741824\n")  # a 1 GiB container with 300 MiB in use
    (tmp_path / "current").write_text(f"{300 * 2 ** 20}\n")
    monkeypatch.setattr(resources, "_CGROUP_FILES", ((str(tmp_path / "max"), str(tmp_path / "current")),))
    limited = resources.available_memory()
    assert limited == 724 * 2 ** 20 if got > 2 ** 30 else limited <= 724 * 2 ** 20
    (tmp_path / "max").write_text("max\n")  # cgroup v2 without a limit
    assert abs(resources.available_memory() - got) < 256 * 2 ** 20
