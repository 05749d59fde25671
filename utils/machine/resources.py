"""What this machine offers one process: its CPU cores, its memory, and the DataLoader workers
that follow from them (the one home of the ``--workers`` default)."""
from __future__ import annotations

import os
from pathlib import Path

# --workers when not given. On the CPU the network and the workers share the cores, and two
# workers keep ahead of a step there (docs/performance.md), so the original default stays. A GPU
# computes a step in a fraction of that time: there every core left to the workers feeds it.
CPU_WORKERS = 2
CUDA_MAX_WORKERS = 8
WORKERS_RULE = (f"default: {CPU_WORKERS} on the CPU; on CUDA one per CPU core available to this process "
                f"(os.sched_getaffinity, shared among torchrun's processes on the machine) less one for the "
                f"training loop, at least {CPU_WORKERS} and at most {CUDA_MAX_WORKERS}")


def available_cores() -> int:
    """CPU cores this process may run on (its affinity mask; the CPU count where there is none)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        return os.cpu_count() or 1


def processes_on_this_machine() -> int:
    """How many training processes share this machine: torchrun's LOCAL_WORLD_SIZE, else 1."""
    try:
        return max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    except ValueError:
        return 1


def default_workers(device_type: str, cores: int | None = None, processes: int | None = None) -> int:
    """DataLoader workers for a process training on ``device_type`` ('cpu', 'cuda', ...): the rule
    of ``WORKERS_RULE``. ``cores`` and ``processes`` default to this machine's."""
    if device_type != "cuda":
        return CPU_WORKERS
    cores = available_cores() if cores is None else cores
    processes = processes_on_this_machine() if processes is None else processes
    per_process = max(1, cores // max(1, processes))
    return min(CUDA_MAX_WORKERS, max(CPU_WORKERS, per_process - 1))


def available_memory() -> int | None:
    """Bytes of memory available to new allocations without swapping: MemAvailable of
    /proc/meminfo, or less where a container's memory limit leaves less (cgroup v2 or v1; the
    usage it counts includes page cache, so this errs low); None where the system does not say."""
    found = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                found = int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    if found is None:
        try:
            found = int(os.sysconf("SC_AVPHYS_PAGES")) * int(os.sysconf("SC_PAGE_SIZE"))
        except (AttributeError, ValueError, OSError):
            return None
    headroom = _cgroup_headroom()
    return found if headroom is None else min(found, headroom)


_CGROUP_FILES = (("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
                 ("/sys/fs/cgroup/memory/memory.limit_in_bytes", "/sys/fs/cgroup/memory/memory.usage_in_bytes"))
_NO_LIMIT = 2 ** 60  # cgroup v1 writes "no limit" as a number near 2**63


def _cgroup_headroom() -> int | None:
    """Bytes left under this container's memory limit, or None without one."""
    for limit_file, usage_file in _CGROUP_FILES:
        try:
            limit = Path(limit_file).read_text().strip()
            if limit == "max" or int(limit) >= _NO_LIMIT:
                return None
            return max(0, int(limit) - int(Path(usage_file).read_text().strip()))
        except (OSError, ValueError):
            continue
    return None
