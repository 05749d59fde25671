"""Training through `python Experiment.py -c train`'s own code path, data path included, beside
the old decode-every-epoch path and the original's data path, measured in the same run.

    python benchmarks/bench_cli_train.py                          # datapath + train, 256 px, default network
    python benchmarks/bench_cli_train.py datapath --rounds 3      # the data path alone (≥ 4x check)
    python benchmarks/bench_cli_train.py train --size 64 --net demo --images 16 --epochs 3
    python benchmarks/bench_cli_train.py memory                   # hazelnut-sized run: peak memory, workers' PSS

The images are written here (so it runs on any machine): ``--src-size`` px PNGs (900, as MVTec AD
bottle), ``--unique`` distinct photo-like ones (bench_synthesis._fake_photo: sensor noise gives
real-size files) copied up to the count asked, in the MVTec AD layout; DTD from ``--dtd-path``
(default ../shared/data/dtd when present, else the built-in bank); ``--no-fg-masks``.

Parts (each configuration in a fresh process, as a user's run; OMP_WAIT_POLICY=PASSIVE as the CLI):

- ``datapath``: samples/s of the loader -c train builds (utils/training/feed.training_data), no
  network, steady state (the epochs after the first): with the images kept decoded (the default)
  and with --no-image-cache, at --workers 0 with one torch thread (per core) and at the default
  workers; and the original's data path (below) without its network. Rounds alternate the order;
  the ratio kept / decoded at workers 0 is the median of the per-round ratios.
- ``train``: samples/s of whole training steps (utils/training/command.run_train, the trainer's
  own per-epoch record: TrainOutcome.epoch_times), the share of the steps' time spent waiting for
  data, and the projected hours for one MVTec AD category (1501 epochs x 240 images) at that
  rate; for this project (default workers), --no-image-cache, and the original-style path.
- ``memory``: ``-c train`` at 256 px (default network, batch 8, 2 workers) on --mem-images
  1024 x 1024 PNGs (391: hazelnut, MVTec AD's largest training set), with and without the cache,
  stopped after --mem-steps steps: the training process's peak RSS (VmHWM) and PSS, and each
  worker's PSS and private memory (Private_Dirty) from /proc/<pid>/smaps_rollup, sampled twice
  a second.

The original-style path (its Experiment.py and model/TransFusion.py, reimplemented minimally):
a plain DataLoader (shuffle, 4 workers, restarted every epoch) decodes the images; the anomalies
of each batch's first half are synthesised inside the step, one after the other, in the training
process, each sample copied to the host and its anomaly back to the device; then the same
training step as this project's (network, losses, AdamW). Its data wait counts the loader and
that synthesis. The 4096² float32 matmul rate is measured at the start and the end.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import statistics as st
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
sys.path.insert(0, str(ROOT))

DTD = ROOT.parent / "shared" / "data" / "dtd"
CATEGORY = "bottle"
MVTEC_EPOCHS, MVTEC_IMAGES = 1501, 240  # one MVTec AD category as the paper trains it
ORIGINAL_WORKERS = 4


# ----------------------------------------------------------------------------- data


def write_data(root: Path, n_images: int, side: int, unique: int) -> Path:
    """<root>/bottle/{train,test}/good/NNN.png: ``unique`` distinct photos, copied up to ``n_images``
    (kept for the next run with the same numbers)."""
    from bench_synthesis import write_folder_dataset

    train = root / CATEGORY / "train" / "good"
    stamp = root / f".done-{n_images}-{side}-{unique}"
    if stamp.exists():
        return root
    shutil.rmtree(root, ignore_errors=True)
    write_folder_dataset(root / CATEGORY, n_images, min(unique, n_images), side)
    (root / CATEGORY / "test" / "good").mkdir(parents=True)
    shutil.copyfile(train / "000.png", root / CATEGORY / "test" / "good" / "000.png")
    stamp.touch()
    return root


def net_flags(net: str) -> list[str]:
    from utils.demo.recipe import DEMO_SETTINGS as d

    if net == "default":
        return []
    return ["--unet-channel-num", str(d["unet_channel_num"]), "--unet-ch-mults", *map(str, d["unet_ch_mults"]),
            "--unet-attn", *("T" if a else "F" for a in d["unet_attn"]),
            "--unet-group-conv", *("T" if a else "F" for a in d["unet_group_conv"]),
            "--unet-n-blocks", str(d["unet_n_blocks"])]


def train_argv(data: Path, logs: Path, run: str, o: argparse.Namespace, *extra: str) -> list[str]:
    """The -c train command line of one configuration (without the program name)."""
    dtd = ["--dtd-path", str(o.dtd_path)] if o.dtd_path else []
    return ["-c", "train", "-r", run, "-d", str(data), "--category", CATEGORY, "--log-path", str(logs),
            "--img-size", str(o.size), "--bs", str(o.bs), "--epoch-num", str(o.epochs), "--eval-epoch-num", "0",
            "--save-every", "100000", "--keep-last", "1", "--quiet", "--no-fg-masks", "--device", o.device,
            *dtd, *net_flags(o.net), *extra]


# ----------------------------------------------------------------------------- measured in a child process


def _epochs_of(loader, epochs: int, consume) -> list[list[float]]:
    """[seconds, data wait, samples] of each epoch of ``loader``, ``consume(batch)`` per batch; with
    no network all of an epoch's time is data wait."""
    out = []
    for epoch in range(epochs):
        if hasattr(loader, "batch_sampler") and hasattr(loader.batch_sampler, "set_epoch"):
            loader.batch_sampler.set_epoch(epoch)
        t0, n = time.perf_counter(), 0
        for batch in loader:
            consume(batch)
            n += len(batch["image"])
        seconds = time.perf_counter() - t0
        out.append([seconds, seconds, n])
    return out


def child_datapath(argv: list[str], epochs: int) -> dict:
    """The loader -c train builds, iterated without a network."""
    from utils.Argparser import parse_args
    from utils.run.paths import RunPaths
    from utils.training.feed import training_data

    args = parse_args(argv)
    t0 = time.perf_counter()
    data = training_data(args, CATEGORY, RunPaths(args.log_path, args.run_name))
    ready = time.perf_counter() - t0
    times = _epochs_of(data.loader, epochs, lambda batch: None)
    return {"ready_s": ready, "epochs": times, "kept": data.train_set.keeps_decoded}


class OriginalStyle:
    """The original's data path (see the module docstring) around this project's training step."""

    def __init__(self, args: argparse.Namespace, device) -> None:
        import numpy as np
        import torch
        from torch.utils.data import DataLoader

        from data.datasets import TrainDataset
        from data.synthesis import AnomalySynthesizer
        from utils.training.feed import texture_source

        self.device, self.rng = device, np.random.default_rng(args.seed)
        self.train_set = TrainDataset(args.dataset, args.data_path, CATEGORY, args.mode, args.img_size)
        self.synth = AnomalySynthesizer(args.mode, args.img_size, texture_source(args, announce=False))
        self.loader = DataLoader(self.train_set, batch_size=args.bs, shuffle=True, num_workers=ORIGINAL_WORKERS,
                                 generator=torch.Generator().manual_seed(args.seed))

    def with_anomalies(self, batch: dict):
        """The batch on the device with the first half's anomalies, made one at a time here."""
        import torch

        from data.training_data import n_anomalous

        image = batch["image"].to(self.device)
        b, s = image.shape[0], image.shape[-1]
        eps = torch.zeros_like(image)
        mask = torch.zeros(b, 1, s, s, device=self.device)
        mask_c = torch.zeros_like(mask)
        for i in range(n_anomalous(b)):
            out = self.synth(image[i].cpu(), batch["fg"][i], self.rng)
            eps[i], mask[i], mask_c[i] = (out[k].to(self.device) for k in ("eps", "mask", "mask_c"))
        return image, eps, mask, mask_c


def child_datapath_original(argv: list[str], epochs: int) -> dict:
    from utils.Argparser import parse_args

    args = parse_args(argv)
    orig = OriginalStyle(args, "cpu")
    return {"ready_s": 0.0, "epochs": _epochs_of(orig.loader, epochs, orig.with_anomalies), "kept": False}


def child_train(argv: list[str]) -> dict:
    """-c train itself (the command's own code path); the trainer's per-epoch record."""
    from utils.Argparser import parse_args
    from utils.machine.allocator import tune_allocator
    from utils.training.command import run_train

    args = parse_args(argv)
    tune_allocator(reuse_large_blocks=args.malloc_reuse)
    t0 = time.perf_counter()
    outcome = run_train(args)[CATEGORY]
    return {"wall_s": time.perf_counter() - t0, "workers": args.workers,
            "epochs": [[e.seconds, e.data_wait, e.samples] for e in outcome.epoch_times]}


def original_style_training(argv: list[str]) -> dict:
    """The original-style path for ``--epoch-num`` epochs: per epoch (seconds, data wait, samples)."""
    import torch

    from models.losses import transfusion_loss
    from models.transparency import TransparencyProcess, make_training_input
    from models.unet import TransFusionUNet
    from utils.Argparser import parse_args
    from utils.machine.allocator import tune_allocator
    from utils.machine.distributed import pick_device
    from utils.run.settings import runtime_options, unet_config

    args = parse_args(argv)
    tune_allocator(reuse_large_blocks=args.malloc_reuse)
    device = pick_device(args.device)
    orig = OriginalStyle(args, device)
    process, runtime = TransparencyProcess(args.diffusion_num_steps, args.mode), runtime_options(args)
    torch.manual_seed(args.seed)
    net = runtime.place(TransFusionUNet(unet_config(args)), device).train()
    opt, scaler = torch.optim.AdamW(net.parameters(), lr=args.lr), runtime.grad_scaler(device)
    gen = torch.Generator().manual_seed(args.seed)
    epochs = []
    for _ in range(args.epoch_num):
        t0, waited, samples, batches = time.perf_counter(), 0.0, 0, iter(orig.loader)
        while True:
            asked = time.perf_counter()
            batch = next(batches, None)
            if batch is not None:
                x0, eps, mask, mask_c = orig.with_anomalies(batch)
            waited += time.perf_counter() - asked
            if batch is None:
                break
            ti = make_training_input(process, x0, eps, mask, mask_c, gen)
            with runtime.autocast(device):
                eps_hat, x0_hat, logits = net(torch.cat((ti.x_t, ti.mask_c), 1), ti.t)
            terms = transfusion_loss(process, ti.x_t, ti.t, ti.x0, ti.eps, ti.mask,
                                     eps_hat.float(), x0_hat.float(), logits.float())
            opt.zero_grad(set_to_none=True)
            scaler.scale(terms.total).backward()
            scaler.step(opt)
            scaler.update()
            float(terms.total)  # the original reads the loss every step (loss.item())
            samples += len(x0)
        epochs.append([time.perf_counter() - t0, waited, samples])
    return {"wall_s": sum(e[0] for e in epochs), "workers": ORIGINAL_WORKERS, "epochs": epochs}


def child_main(kind: str, spec: dict) -> None:
    import torch

    if spec.get("threads"):
        torch.set_num_threads(spec["threads"])
    if kind == "datapath":
        result = child_datapath(spec["argv"], spec["epochs"])
    elif kind == "datapath_original":
        result = child_datapath_original(spec["argv"], spec["epochs"])
    elif kind == "train":
        result = child_train(spec["argv"])
    else:
        result = original_style_training(spec["argv"])
    print("RESULT " + json.dumps(result), flush=True)


def in_child(kind: str, spec: dict, timeout: float = 3600) -> dict:
    """Run one measurement in a fresh interpreter; its RESULT line."""
    proc = subprocess.run([sys.executable, __file__, "_child", kind, json.dumps(spec)], capture_output=True,
                          text=True, cwd=str(ROOT), timeout=timeout)
    found = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    if proc.returncode != 0 or not found:
        # RuntimeError, not SystemExit: gpu_check records a failed part and measures the next one
        raise RuntimeError(f"{kind} failed ({proc.returncode}):\n{proc.stdout[-1500:]}\n{proc.stderr[-3000:]}")
    return json.loads(found[-1][len("RESULT "):])


# ----------------------------------------------------------------------------- figures


def steady(epochs: list) -> list:
    """The epochs after the first (worker start-up, first touches, cache warm-up): the steady state."""
    return epochs[1:] if len(epochs) > 1 else epochs


def summarise(epochs: list) -> dict:
    """Steady-state samples/s, data-wait share and projected hours for one MVTec AD category
    (MVTEC_EPOCHS x MVTEC_IMAGES samples at that rate) from [seconds, data wait, samples] per epoch."""
    times = steady(epochs)
    seconds, waited, samples = (sum(e[i] for e in times) for i in range(3))
    rate = samples / seconds
    return {"samples_per_s": rate, "wait_share": waited / seconds,
            "hours_per_category": MVTEC_EPOCHS * MVTEC_IMAGES / rate / 3600}


def steps_done(progress: str) -> int:
    """Batches done in an epoch, read from the last tqdm bar of -c train in ``progress`` (stderr)."""
    found = re.findall(r"epoch \d+/\d+:[^\r\n]*?\| *(\d+)/\d+ \[", progress)
    return int(found[-1]) if found else 0


def kib_fields(text: str, fields: tuple[str, ...]) -> dict[str, int]:
    """``name: value kB`` lines of /proc/<pid>/status or smaps_rollup: the ``fields`` asked, in KiB."""
    out = {}
    for line in text.splitlines():
        name, _, rest = line.partition(":")
        if name in fields and rest.split():
            out[name] = int(rest.split()[0])
    return out


# ----------------------------------------------------------------------------- parts


def part_datapath(o: argparse.Namespace, data: Path, logs: Path) -> dict:
    """Data path samples/s: kept vs decoded at workers 0 (one thread) and default workers, original-style."""
    from utils.machine.resources import CPU_WORKERS

    configs = [("kept", "0", []), ("decoded", "0", ["--no-image-cache"]),
               ("kept", "default", []), ("decoded", "default", ["--no-image-cache"]), ("original", "4", [])]
    rates: dict[str, list[float]] = {}
    for r in range(o.rounds):
        for path, workers, extra in (configs if r % 2 == 0 else configs[::-1]):
            flags = [*extra, *(["--workers", "0"] if workers == "0" else [])]
            spec = {"argv": train_argv(data, logs, "dp", o, *flags), "epochs": o.datapath_epochs,
                    "threads": 1 if workers == "0" else 0}
            got = in_child("datapath_original" if path == "original" else "datapath", spec)
            if got["kept"] != (path == "kept"):
                raise SystemExit(f"{path}: the images were {'' if got['kept'] else 'not '}kept decoded")
            rate = summarise(got["epochs"])["samples_per_s"]
            rates.setdefault(f"{path}/{workers}", []).append(rate)
            print(f"  round {r + 1}: {path:8s} workers {workers:7s} {rate:7.1f} samples/s "
                  f"(ready in {got['ready_s']:.1f} s)", flush=True)
    ratios = [k / d for k, d in zip(rates["kept/0"], rates["decoded/0"])]
    print(f"\n| data path ({o.size} px, {o.src_size} px PNGs, batch {o.bs}) | workers | samples/s (median) | rounds |")
    print("|---|---|---|---|")
    names = {"kept": "this project: images kept decoded (default)", "decoded": "--no-image-cache (decode every epoch)",
             "original": "original-style: 4 decoding workers, synthesis serially in the main process"}
    for key, values in rates.items():
        path, workers = key.split("/")
        shown = f"{CPU_WORKERS} (default)" if workers == "default" else workers
        print(f"| {names[path]} | {shown} | {st.median(values):.1f} | {', '.join(f'{v:.1f}' for v in values)} |")
    print(f"\nkept / decoded at workers 0 (one core): {st.median(ratios):.2f}x "
          f"(per round {', '.join(f'{x:.2f}' for x in ratios)})")
    return {"rates": rates, "ratio_kept_over_decoded_workers0": st.median(ratios), "ratios": ratios}


def part_train(o: argparse.Namespace, data: Path, logs: Path, extra: tuple[str, ...] = ()) -> dict:
    """Whole training steps: this project (-c train), --no-image-cache, the original-style path."""
    rows = {}
    for i, (name, kind, flags) in enumerate((("this project", "train", []),
                                             ("--no-image-cache", "train", ["--no-image-cache"]),
                                             ("original-style", "original", []))):
        shutil.rmtree(logs / f"tr{i}", ignore_errors=True)  # a fresh run each time
        got = in_child(kind, {"argv": train_argv(data, logs, f"tr{i}", o, *flags, *extra)}, timeout=o.timeout)
        rows[name] = {**summarise(got["epochs"]), "workers": got["workers"], "epochs": got["epochs"]}
        r = rows[name]
        print(f"  {name}: {r['samples_per_s']:.3f} samples/s, waiting for data {r['wait_share']:.1%}, "
              f"{r['hours_per_category']:.1f} h per category ({got['workers']} workers)", flush=True)
    print(f"\n| training, {o.size} px, batch {o.bs}, {o.net} network, {o.device} {' '.join(extra)} | workers | "
          f"samples/s | data-wait share | projected hours per MVTec AD category ({MVTEC_EPOCHS} x {MVTEC_IMAGES}) |")
    print("|---|---|---|---|---|")
    for name, r in rows.items():
        print(f"| {name} | {r['workers']} | {r['samples_per_s']:.3g} | {r['wait_share']:.1%} | "
              f"{r['hours_per_category']:.3g} |")
    return rows


def _kib(path: str, fields: tuple[str, ...]) -> dict[str, int]:
    """kib_fields of a /proc file ({} once the process is gone)."""
    try:
        return kib_fields(Path(path).read_text(), fields)
    except OSError:
        return {}


def _children(pid: int) -> list[int]:
    found = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            found += [int(c) for c in (task / "children").read_text().split()]
        except OSError:
            pass
    return sorted(set(found))


def watch_training(argv: list[str], steps: int, timeout: float) -> dict:
    """Run ``python Experiment.py argv``, sample the memory of it and its DataLoader workers twice a
    second until ``steps`` training steps are done (its progress bar says so), then stop it."""
    import threading

    proc = subprocess.Popen([sys.executable, str(ROOT / "Experiment.py"), *argv], cwd=str(ROOT),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    done, text = [0], []

    def read_progress() -> None:
        tail = ""
        while chunk := os.read(proc.stderr.fileno(), 4096):
            text.append(chunk.decode(errors="replace"))
            tail = (tail + text[-1])[-8192:]  # a bar may be split across two reads
            done[0] = max(done[0], steps_done(tail))

    threading.Thread(target=read_progress, daemon=True).start()
    main: dict[str, int] = {}
    workers: dict[int, dict[str, int]] = {}
    total_pss, t0 = 0, time.perf_counter()
    while proc.poll() is None and done[0] < steps and time.perf_counter() - t0 < timeout:
        status = _kib(f"/proc/{proc.pid}/status", ("VmHWM", "VmRSS"))
        rollup = _kib(f"/proc/{proc.pid}/smaps_rollup", ("Pss", "Private_Dirty"))
        for k, v in {**status, **rollup}.items():
            main[k] = max(main.get(k, 0), v)
        pss_now = rollup.get("Pss", 0)
        for child in _children(proc.pid):
            r = _kib(f"/proc/{child}/smaps_rollup", ("Pss", "Private_Dirty", "Rss"))
            mine = workers.setdefault(child, {})
            for k, v in r.items():
                mine[k] = max(mine.get(k, 0), v)
            pss_now += r.get("Pss", 0)
        total_pss = max(total_pss, pss_now)
        time.sleep(0.5)
    stopped_by_us = proc.poll() is None
    if stopped_by_us:
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    if not stopped_by_us and proc.returncode != 0:
        raise SystemExit(f"training failed ({proc.returncode}): {''.join(text)[-2000:]}")
    out = proc.stdout.read().decode(errors="replace")
    return {"main_kib": main, "workers_kib": list(workers.values()), "total_pss_kib": total_pss,
            "steps_done": done[0], "seconds": time.perf_counter() - t0,
            "said": [line for line in out.splitlines() if "decoded once" in line or "note:" in line]}


def part_memory(o: argparse.Namespace, logs: Path) -> dict:
    """Peak memory and the workers' PSS of a hazelnut-sized run, with and without the cache."""
    from data.image_cache import decoded_bytes

    data = write_data(o.out / "data_memory", o.mem_images, o.mem_src_size, o.unique)
    mem = argparse.Namespace(**{**vars(o), "size": 256, "bs": 8, "epochs": 1, "net": "default", "device": "cpu"})
    cache = decoded_bytes(o.mem_images, 256) / 2**20
    print(f"| {o.mem_images} images of {o.mem_src_size} px at 256 px, 2 workers | training process peak RSS (VmHWM) "
          f"| its PSS | each worker's PSS | each worker's Private_Dirty | total PSS (peak) | steps, seconds |")
    print("|---|---|---|---|---|---|---|", flush=True)
    rows = {}
    for name, flags in ((f"images kept decoded (default; {cache:.0f} MiB)", []),
                        ("--no-image-cache", ["--no-image-cache"])):
        argv = [a for a in train_argv(data, logs, "mem", mem, "--workers", "2", *flags) if a != "--quiet"]
        shutil.rmtree(logs / "mem", ignore_errors=True)
        rows[name] = r = watch_training(argv, o.mem_steps, o.timeout)
        main, workers = r["main_kib"], r["workers_kib"]
        each = {k: " / ".join(f"{x.get(k, 0) / 1024:.0f}" for x in workers) for k in ("Pss", "Private_Dirty")}
        print(f"| {name} | {main.get('VmHWM', 0) / 1024:.0f} MiB | {main.get('Pss', 0) / 1024:.0f} MiB | "
              f"{each['Pss']} MiB | {each['Private_Dirty']} MiB | {r['total_pss_kib'] / 1024:.0f} MiB | "
              f"{r['steps_done']}, {r['seconds']:.0f} s |", flush=True)
        for line in r["said"]:
            print(f"    said: {line}")
    return rows


# ----------------------------------------------------------------------------- main


def options(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("parts", nargs="*", default=[], help="datapath, train, memory (default: datapath train)")
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--bs", type=int, default=8)
    p.add_argument("--net", choices=("default", "demo"), default="default")
    p.add_argument("--device", default="cpu")
    p.add_argument("--src-size", type=int, default=900, help="side of the PNGs written (MVTec AD bottle: 900)")
    p.add_argument("--unique", type=int, default=16, help="distinct PNGs (the rest are copies)")
    p.add_argument("--images", type=int, default=8, help="train part: training images (one batch per epoch at --bs 8)")
    p.add_argument("--epochs", type=int, default=2, help="train part: epochs (the first is left out)")
    p.add_argument("--datapath-images", type=int, default=48)
    p.add_argument("--datapath-epochs", type=int, default=4, help="data path: epochs (the first is left out)")
    p.add_argument("--rounds", type=int, default=3, help="data path: rounds, alternating the order")
    p.add_argument("--mem-images", type=int, default=391, help="memory part: training images (hazelnut: 391)")
    p.add_argument("--mem-src-size", type=int, default=1024)
    p.add_argument("--mem-steps", type=int, default=1,
                   help="memory part: training steps before it is stopped (the first allocates all the step needs)")
    p.add_argument("--dtd-path", type=Path, default=DTD if (DTD / "images").is_dir() else None)
    p.add_argument("--timeout", type=float, default=3600)
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "out" / "cli_train")
    o = p.parse_args(argv)
    o.parts = o.parts or ["datapath", "train"]
    unknown = set(o.parts) - {"datapath", "train", "memory"}
    if unknown:
        p.error(f"unknown part(s) {', '.join(sorted(unknown))}: choose among datapath, train, memory")
    return o


def header(o: argparse.Namespace, name: str) -> float:
    from bench_eval import cpu_name

    from utils.machine.resources import available_cores
    from utils.machine.yardstick import matmul_gflops

    mm = st.median(matmul_gflops())
    load = " ".join(Path("/proc/loadavg").read_text().split()[:3]) if Path("/proc/loadavg").exists() else "?"
    print(f"# {name} {time.strftime('%Y-%m-%d %H:%M')} {cpu_name()}, {available_cores()} cores available; "
          f"4096x4096 float32 matmul {mm:.1f} GFLOP/s; load average {load}; textures: "
          f"{o.dtd_path or 'built-in bank'}", flush=True)
    return mm


def main() -> None:
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as Experiment.py, before torch is imported
    if len(sys.argv) > 1 and sys.argv[1] == "_child":
        return child_main(sys.argv[2], json.loads(sys.argv[3]))
    o = options()
    from utils.machine.yardstick import matmul_gflops

    report: dict = {"options": {k: str(v) for k, v in vars(o).items()}, "matmul_start": header(o, "bench_cli_train")}
    logs = o.out / "logs"
    if "datapath" in o.parts:
        data = write_data(o.out / f"data_{o.datapath_images}", o.datapath_images, o.src_size, o.unique)
        print(f"## data path: {o.datapath_images} images of {o.src_size} px at {o.size} px", flush=True)
        report["datapath"] = part_datapath(o, data, logs)
    if "train" in o.parts:
        data = write_data(o.out / f"data_{o.images}", o.images, o.src_size, o.unique)
        print(f"## training: {o.images} images of {o.src_size} px, {o.epochs} epochs (the first left out)", flush=True)
        report["train"] = part_train(o, data, logs)
    if "memory" in o.parts:
        print(f"## memory: {o.mem_images} images of {o.mem_src_size} px", flush=True)
        report["memory"] = part_memory(o, logs)
    report["matmul_end"] = st.median(matmul_gflops())
    print(f"# matmul at the end {report['matmul_end']:.1f} GFLOP/s")
    o.out.mkdir(parents=True, exist_ok=True)
    path = o.out / f"bench_cli_train_{time.strftime('%Y%m%d_%H%M%S')}.json"
    path.write_text(json.dumps(report, indent=1))
    print(f"written {path}")


if __name__ == "__main__":
    main()
