"""Training steps through the command line: `python Experiment.py -c train`, data loading included.

    python benchmarks/bench_cli_train.py                       # 64 px, default network, workers 0 1 2
    python benchmarks/bench_cli_train.py --size 128 --workers 0 2 --net demo

The data are the real MVTec AD bottle images of ../shared/data (900x900 PNGs, as the full
category has them), copied --n-images times over in the MVTec AD layout, so every step decodes
and resizes real files and synthesises anomalies in the DataLoader exactly as a user's run does.
Each configuration trains twice in a fresh process, for --epochs-short and --epochs-long epochs;
seconds per step = (wall(long) - wall(short)) / (extra epochs x steps per epoch), which removes
the start-up (imports, foreground masks, the first epoch's warm-up). The 4096² float32 matmul
rate is measured in the same run. Runs one configuration at a time; the machine should be idle.
"""
from __future__ import annotations

import argparse
import math
import os
import shutil
import statistics as st
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
sys.path.insert(0, str(ROOT))

BOTTLE = ROOT.parent / "shared" / "data" / "mvtec_ad" / "bottle"


def make_data(root: Path, n_images: int) -> Path:
    """<root>/bottle/{train/good,test/good}: the real bottle training images, repeated."""
    sources = sorted((BOTTLE / "train" / "good").glob("*.png"))
    if not sources:
        raise SystemExit(f"{BOTTLE} is absent: this benchmark needs the real bottle slice")
    train = root / "bottle" / "train" / "good"
    if len(list(train.glob("*.png"))) != n_images:
        shutil.rmtree(root, ignore_errors=True)
        train.mkdir(parents=True)
        for i in range(n_images):
            shutil.copyfile(sources[i % len(sources)], train / f"{i:03d}.png")
        (root / "bottle" / "test" / "good").mkdir(parents=True)
        shutil.copyfile(sources[0], root / "bottle" / "test" / "good" / "000.png")
    return root


def net_flags(net: str) -> list[str]:
    from utils.demo.recipe import DEMO_SETTINGS as d

    if net == "default":
        return []
    return ["--unet-channel-num", str(d["unet_channel_num"]), "--unet-ch-mults", *map(str, d["unet_ch_mults"]),
            "--unet-attn", *("T" if a else "F" for a in d["unet_attn"]),
            "--unet-group-conv", *("T" if a else "F" for a in d["unet_group_conv"]),
            "--unet-n-blocks", str(d["unet_n_blocks"])]


def train_wall(data: Path, logs: Path, size: int, bs: int, epochs: int, workers: int, net: str) -> float:
    run = f"w{workers}_e{epochs}"
    shutil.rmtree(logs / run, ignore_errors=True)
    cmd = [sys.executable, str(ROOT / "Experiment.py"), "-c", "train", "-r", run, "-d", str(data), "--category",
           "bottle", "--log-path", str(logs), "--img-size", str(size), "--bs", str(bs), "--epoch-num", str(epochs),
           "--workers", str(workers), "--eval-epoch-num", "0", "--save-every", "1000", "--quiet", "--no-fg-masks",
           "--device", "cpu", *net_flags(net)]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=str(ROOT), env=dict(os.environ))
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"training failed ({proc.returncode}):\n{proc.stderr[-2000:]}")
    return wall


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--bs", type=int, default=8)
    p.add_argument("--n-images", type=int, default=48)
    p.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--epochs-short", type=int, default=1)
    p.add_argument("--epochs-long", type=int, default=3)
    p.add_argument("--net", choices=("default", "demo"), default="default")
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "out" / "cli_train")
    args = p.parse_args()
    from bench_eval import cpu_name

    from utils.machine.yardstick import matmul_gflops

    data = make_data(args.out / "data", args.n_images)
    steps = math.ceil(args.n_images / args.bs) * (args.epochs_long - args.epochs_short)
    mm = st.median(matmul_gflops())
    print(f"# bench_cli_train {time.strftime('%Y-%m-%d %H:%M')} {cpu_name()}, {os.cpu_count()} CPUs; "
          f"4096x4096 float32 matmul {mm:.1f} GFLOP/s; {args.size} px, batch {args.bs}, {args.net} network, "
          f"{args.n_images} real bottle images (900x900 PNG)")
    print("| workers | s/step | steps/s | wall, short run | wall, long run |")
    print("|---|---|---|---|---|")
    for w in args.workers:
        short = train_wall(data, args.out / "logs", args.size, args.bs, args.epochs_short, w, args.net)
        long = train_wall(data, args.out / "logs", args.size, args.bs, args.epochs_long, w, args.net)
        per_step = (long - short) / steps
        print(f"| {w} | {per_step:.3f} | {1 / per_step:.2f} | {short:.1f} s | {long:.1f} s |", flush=True)
    print(f"# matmul at the end {st.median(matmul_gflops()):.1f} GFLOP/s")


if __name__ == "__main__":
    main()
