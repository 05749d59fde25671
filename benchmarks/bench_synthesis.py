"""Synthetic-anomaly training data: synthesis throughput, and how long training waits for data.

    python benchmarks/bench_synthesis.py --n 40                  # = throughput --n 40 (the old default)
    python benchmarks/bench_synthesis.py throughput --n 40
    python benchmarks/bench_synthesis.py wait --size 256 --bs 8 --workers 2 --steps 4
    python benchmarks/bench_synthesis.py wait --size 64 --steps 8        # a quick run
    python benchmarks/bench_synthesis.py profile --dtd-path ../shared/data/dtd   # ms per part of an item

``throughput``: SyntheticAnomalyDataset items with make_anomaly=True at 256 px for rgb, rgbd and
d, in this process (no DataLoader), on synthetic base images, with the built-in texture bank (so
it runs without any dataset). One torch thread by default, as in a DataLoader worker.

``wait``: the share of a training step's wall time spent waiting for data. It does what
utils/training/feed.py builds: ``make_train_loader`` (HalfBatchSampler, SyntheticAnomalyDataset,
``--workers`` persistent worker processes, default prefetch) over ``TrainDataset('folder', ...)``
reading PNG files written to a temporary folder (``--src-size`` px, 1024 by default like most
MVTec AD images), the built-in texture bank, the default rgb TransFusionUNet (n_channels 64),
AdamW, float32; for each data path of ``--paths``, one after the other: ``kept``, the images and
textures decoded and resized once before the workers start (what -c train does by default), and
``decoded``, resized to ``--size`` on every read (--no-image-cache). For each step:

- wait    = time blocked in ``next(iterator)``;
- compute = make_training_input + forward + transfusion_loss + zero_grad/backward + AdamW step;
- share   = wait / (wait + compute).

The first step (worker start-up, first forward) is reported but left out of the medians. The
training process keeps torch's default thread count (all cores), so the workers compete with it
for CPU, as in real training. The workers also log the wall and CPU time of every item they make
(file read, synthesis), from which the benchmark reports how long one worker needs for a batch
under that contention and the headroom = step time / (batch time / workers): above 1, the
workers keep up in steady state (the prefetch queue cannot hide a shortfall in a long run).
"""
from __future__ import annotations

import argparse
import os
import shutil
import statistics as st
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from anywhere

from data.synthesis import AnomalySynthesizer  # noqa: E402
from data.textures import TextureSource  # noqa: E402
from data.training_data import HalfBatchSampler, SyntheticAnomalyDataset  # noqa: E402

SUBCOMMANDS = ("throughput", "wait", "profile")


# ----------------------------------------------------------------------------- helpers


def loadavg() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "?"


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "?"


def _median(xs: list[float]) -> float:
    return st.median(xs) if xs else float("nan")


# ----------------------------------------------------------------------------- throughput


class _SyntheticBase(torch.utils.data.Dataset):
    """Random smooth images (and depth with some missing points) standing in for a real dataset."""

    def __init__(self, n: int, channels: int, size: int) -> None:
        # Made up front so that the timing measures synthesis, not the stand-in images.
        self.items = [self._make(i, channels, size) for i in range(n)]

    @staticmethod
    def _make(i: int, c: int, s: int) -> dict:
        rng = np.random.default_rng(i)
        yy, xx = np.mgrid[0:s, 0:s] / s
        img = np.stack([np.sin(6 * xx + rng.uniform(0, 6)) * np.cos(4 * yy) for _ in range(c)]).astype(np.float32)
        if c in (1, 4):
            img[-1] = -0.5 - 0.3 * img[-1] ** 2
            img[-1, : s // 8] = 0.0  # missing depth
        fg = np.zeros((1, s, s), np.float32)
        fg[:, s // 8 :, s // 8 :] = 1.0
        return {"image": torch.from_numpy(img), "fg": torch.from_numpy(fg), "index": i}

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict:
        return self.items[i]


def bench(mode: str, n: int, size: int, textures: TextureSource) -> float:
    """Samples per second of anomalous items for `mode`."""
    channels = {"rgb": 3, "d": 1, "rgbd": 4}[mode]
    ds = SyntheticAnomalyDataset(_SyntheticBase(n, channels, size), AnomalySynthesizer(mode, size, textures))
    sampler = HalfBatchSampler(n, 1, seed=0)  # B == 1: every key is anomalous
    keys = [k for batch in sampler for k in batch]
    ds[keys[0]]  # warm-up: first texture decode, lazy imports
    t0 = time.perf_counter()
    for k in keys:
        ds[k]
    return len(keys) / (time.perf_counter() - t0)


def run_throughput(args: argparse.Namespace) -> None:
    torch.set_num_threads(args.threads)
    textures = TextureSource.builtin()
    print(f"textures: {textures.description}; torch threads {torch.get_num_threads()}, load average {loadavg()}")
    for mode in ("rgb", "rgbd", "d"):
        rate = bench(mode, args.n, args.size, textures)
        print(f"{mode:5s} {args.size}px: {rate:7.1f} samples/s ({1000.0 / rate:6.1f} ms/sample, n={args.n})")


# ----------------------------------------------------------------------------- profile


def run_profile(args: argparse.Namespace) -> None:
    """Milliseconds of each part of one training item at --size px, one torch thread: reading a
    --src-size PNG (decode + resize) against converting a kept image, the Perlin map, each
    augmentation, a texture drawn from files and from memory, and a whole anomaly."""
    from PIL import Image

    from data import augment
    from data.io import network_rgb, read_rgb, read_rgb_resized
    from data.perlin import perlin_anomaly_map
    from data.synthesis import shuffle_tiles, to_uint8_image
    from utils.machine.yardstick import matmul_gflops

    torch.set_num_threads(1)
    dtd = Path(args.dtd_path) if args.dtd_path else None
    textures = TextureSource.from_dtd(dtd) if dtd else TextureSource.builtin()
    kept = TextureSource.from_dtd(dtd) if dtd else TextureSource.builtin()
    kept.keep_decoded(args.size)
    tmp = Path(tempfile.mkdtemp(prefix="bench_profile_"))
    png = tmp / "photo.png"
    Image.fromarray(_fake_photo(0, args.src_size)).save(png)
    resized = read_rgb_resized(png, args.size)
    image = read_rgb(png, args.size)
    u8 = to_uint8_image(image)
    synth = AnomalySynthesizer("rgb", args.size, kept)
    fg = torch.ones(1, args.size, args.size)
    parts = {"read a PNG (decode + resize + convert)": lambda i: read_rgb(png, args.size),
             "convert a kept image": lambda i: network_rgb(resized),
             "Perlin map incl. rotation": lambda i: perlin_anomaly_map(args.size, np.random.default_rng(i)),
             "texture from its file": lambda i: textures.sample(args.size, np.random.default_rng(i)),
             "texture kept decoded": lambda i: kept.sample(args.size, np.random.default_rng(i)),
             "shuffle_tiles": lambda i: shuffle_tiles(u8, np.random.default_rng(i)),
             **{f"augment: {name}": (lambda op: lambda i: op(u8, np.random.default_rng(i)))(op)
                for name, op in augment.AUGMENTATIONS},
             "one anomaly (AnomalySynthesizer)": lambda i: synth(image, fg, np.random.default_rng(i))}
    mm = st.median(matmul_gflops())
    print(f"# bench_synthesis profile {time.strftime('%Y-%m-%d %H:%M')} {cpu_name()}; {args.size} px, "
          f"{args.src_size} px PNG, textures {textures.description}; 1 torch thread; matmul {mm:.0f} GFLOP/s; "
          f"load average {loadavg()}")
    print("| part | ms (median of rounds) |\n|---|---|")
    for name, fn in parts.items():
        fn(0)
        rounds = []
        for r in range(args.rounds):
            t0 = time.perf_counter()
            for i in range(args.n):
                fn(r * args.n + i)
            rounds.append((time.perf_counter() - t0) / args.n * 1000)
        print(f"| {name} | {st.median(rounds):.2f} |", flush=True)
    print(f"# matmul at the end {st.median(matmul_gflops()):.0f} GFLOP/s")
    shutil.rmtree(tmp, ignore_errors=True)


# ----------------------------------------------------------------------------- wait


def _fake_photo(i: int, s: int) -> np.ndarray:
    """An MVTec-like photo, uint8 [s, s, 3]: a textured object on a lit background, sensor noise."""
    rng = np.random.default_rng(1000 + i)
    yy, xx = np.mgrid[0:s, 0:s].astype(np.float32) / s
    light = 0.75 + 0.25 * np.cos(2.5 * (xx - rng.uniform(0.3, 0.7))) * np.cos(2.0 * (yy - rng.uniform(0.3, 0.7)))
    bg = np.asarray(rng.uniform(40, 90, 3), np.float32)
    obj = np.asarray(rng.uniform(90, 220, 3), np.float32)
    cy, cx, r = rng.uniform(0.4, 0.6), rng.uniform(0.4, 0.6), rng.uniform(0.25, 0.38)
    d = np.sqrt((yy - cy) ** 2 + (xx - cx) ** 2)
    inside = np.clip((r - d) * s / 3.0, 0.0, 1.0)[..., None]  # anti-aliased edge
    f1, f2, ph = rng.uniform(20, 60), rng.uniform(20, 60), rng.uniform(0, 6.3)
    texture = (0.85 + 0.15 * np.sin(f1 * xx + ph) * np.sin(f2 * yy))[..., None]
    img = (bg * (1 - inside) + obj * texture * inside) * light[..., None]
    img += rng.normal(0.0, 3.0, img.shape).astype(np.float32)  # sensor noise: realistic PNG sizes
    return np.clip(np.round(img), 0, 255).astype(np.uint8)


def write_folder_dataset(root: Path, n_images: int, n_unique: int, src_size: int) -> int:
    """root/train/good/000.png ...: n_unique distinct photos, repeated (as copies) up to n_images."""
    from PIL import Image

    good = root / "train" / "good"
    good.mkdir(parents=True)
    for i in range(n_images):
        path = good / f"{i:03d}.png"
        if i < n_unique:
            Image.fromarray(_fake_photo(i, src_size)).save(path)
        else:
            shutil.copyfile(good / f"{i % n_unique:03d}.png", path)
    return sum(p.stat().st_size for p in good.iterdir())


class _Log:
    """Appends 'kind wall_start wall_end cpu_seconds' lines to <dir>/<pid>.log (one file per worker)."""

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir

    def write(self, kind: str, t0: float, t1: float, cpu: float) -> None:
        with open(self.log_dir / f"{os.getpid()}.log", "a") as f:
            f.write(f"{kind} {t0:.6f} {t1:.6f} {cpu:.6f}\n")


class _TimedBase(torch.utils.data.Dataset):
    """The base dataset, logging the time of each item read (file decode + resize)."""

    def __init__(self, base: torch.utils.data.Dataset, log: _Log) -> None:
        self.base, self.log = base, log

    def __len__(self) -> int:
        return len(self.base)  # type: ignore[arg-type]

    def __getitem__(self, i: int) -> dict:
        c0, t0 = time.thread_time(), time.perf_counter()
        item = self.base[i]
        self.log.write("read", t0, time.perf_counter(), time.thread_time() - c0)
        return item


class _TimedSynth:
    """The synthesizer, logging the time of each anomaly it makes."""

    def __init__(self, synth: AnomalySynthesizer, log: _Log) -> None:
        self.synth, self.log = synth, log

    def __call__(self, image, fg, rng):
        c0, t0 = time.thread_time(), time.perf_counter()
        out = self.synth(image, fg, rng)
        self.log.write("synth", t0, time.perf_counter(), time.thread_time() - c0)
        return out


def _worker_stats(log_dir: Path, bs: int) -> dict:
    """Per-worker item logs -> read/synth medians, CPU share, and per-batch production times."""
    reads, synths, batch_walls, batch_cpus, per_worker = [], [], [], [], []
    for path in sorted(log_dir.glob("*.log")):
        events = [line.split() for line in path.read_text().splitlines()]
        events = [(k, float(a), float(b), float(c)) for k, a, b, c in events]
        per_worker.append(len([e for e in events if e[0] == "read"]))
        reads += [e for e in events if e[0] == "read"]
        synths += [e for e in events if e[0] == "synth"]
        # A worker makes a batch's items one after the other: the batch runs from its first read
        # to the end of the last event before the next batch's first read.
        starts = [j for j, e in enumerate(events) if e[0] == "read"][::bs]
        for a, b in zip(starts, starts[1:] + [len(events)]):
            group = events[a:b]
            batch_walls.append(group[-1][2] - group[0][1])
            batch_cpus.append(sum(e[3] for e in group))
    return {
        "read_ms": 1000 * _median([e[2] - e[1] for e in reads]),
        "read_cpu_ms": 1000 * _median([e[3] for e in reads]),
        "synth_ms": 1000 * _median([e[2] - e[1] for e in synths]),
        "synth_cpu_ms": 1000 * _median([e[3] for e in synths]),
        "n_synth": len(synths),
        # batches after each worker's first (which also decodes the texture bank into its cache)
        "batch_wall": batch_walls,
        "batch_cpu": batch_cpus,
        "items_per_worker": per_worker,
    }


def wait_one(args: argparse.Namespace, root: Path, log_dir: Path, kept: bool) -> dict:
    """One data path (``kept``: the images and textures decoded once, as -c train keeps them by
    default; else decoded from the files every time, --no-image-cache): the steps, then the summary."""
    from data.datasets import TrainDataset
    from data.training_data import make_train_loader
    from models.losses import transfusion_loss
    from models.transparency import TransparencyProcess, make_training_input
    from models.unet import TransFusionUNet, UNetConfig

    log_dir.mkdir(parents=True)
    print(f"## {'images kept decoded (default)' if kept else '--no-image-cache: decoded every time'}", flush=True)
    train_set, textures = TrainDataset("folder", root, root.name, "rgb", args.size), TextureSource.builtin()
    if kept:
        t0 = time.perf_counter()
        train_set.keep_decoded(threads=args.fill_threads)
        textures.keep_decoded(args.size, threads=args.fill_threads)
        print(f"kept {len(train_set)} images and {len(textures.paths)} textures decoded in "
              f"{time.perf_counter() - t0:.1f} s", flush=True)
    log = _Log(log_dir)
    base = _TimedBase(train_set, log)
    synth = _TimedSynth(AnomalySynthesizer("rgb", args.size, textures), log)
    loader = make_train_loader(base, synth, args.bs, args.seed, args.workers)  # type: ignore[arg-type]

    process = TransparencyProcess(args.diffusion_steps, "rgb")
    torch.manual_seed(args.seed)
    net = TransFusionUNet(UNetConfig(mode="rgb", n_channels=args.n_channels)).train()
    opt = torch.optim.AdamW(net.parameters(), lr=1e-5)
    gen = torch.Generator().manual_seed(args.seed)

    epoch = 0
    loader.batch_sampler.set_epoch(epoch)
    it = iter(loader)
    rows = []  # (step, wait, compute, epoch_start)
    for step in range(args.steps + 1):
        epoch_start = step == 0
        t0 = time.perf_counter()
        try:
            batch = next(it)
        except StopIteration:  # next epoch, as the training loop does
            epoch += 1
            epoch_start = True
            loader.batch_sampler.set_epoch(epoch)
            it = iter(loader)
            batch = next(it)
        t1 = time.perf_counter()
        ti = make_training_input(process, batch["image"], batch["eps"], batch["mask"], batch["mask_c"], gen)
        eps_hat, x0_hat, logits = net(torch.cat((ti.x_t, ti.mask_c), 1), ti.t)
        terms = transfusion_loss(process, ti.x_t, ti.t, ti.x0, ti.eps, ti.mask, eps_hat, x0_hat, logits)
        opt.zero_grad(set_to_none=True)
        terms.total.backward()
        opt.step()
        loss = float(terms.total.detach())
        t2 = time.perf_counter()
        wait, comp = t1 - t0, t2 - t1
        rows.append((step, wait, comp, epoch_start))
        print(f"  step {step}: wait {wait:8.3f} s  compute {comp:8.3f} s  share {wait / (wait + comp):6.1%}  "
              f"loss {loss:.4f}{'  (start-up)' if step == 0 else '  (epoch start)' if epoch_start else ''}  "
              f"load {loadavg().split()[0]}", flush=True)
    del it, loader  # shut the workers down so that their logs are complete
    time.sleep(0.2)

    timed = rows[1:]
    waits = [r[1] for r in timed]
    comps = [r[2] for r in timed]
    shares = [r[1] / (r[1] + r[2]) for r in timed]
    w_med, c_med = st.median(waits), st.median(comps)
    ws = _worker_stats(log_dir, args.bs)
    bw = ws["batch_wall"]
    # Drop each worker's first batch (texture-bank decode, start-up) when there are others.
    bw_steady = bw[args.workers:] if len(bw) > args.workers else bw
    bc_steady = ws["batch_cpu"][args.workers:] if len(bw) > args.workers else ws["batch_cpu"]
    b_med, bc_med = st.median(bw_steady), st.median(bc_steady)
    step_med = st.median([w + c for w, c in zip(waits, comps)])
    headroom = step_med / (b_med / args.workers)
    print()
    print(f"start-up step: wait {rows[0][1]:.3f} s (workers start, first batch), compute {rows[0][2]:.3f} s")
    print(f"timed steps {len(timed)}: wait median {w_med:.4f} s (max {max(waits):.4f}), compute median "
          f"{c_med:.3f} s (min {min(comps):.3f}, max {max(comps):.3f})")
    total_share = sum(waits) / (sum(waits) + sum(comps))
    print(f"wait share: median-based {w_med / (w_med + c_med):.2%}, total {total_share:.2%}, "
          f"worst step {max(shares):.2%}  (target < 10%: {'MET' if max(shares) < 0.10 else 'NOT met'})")
    first_batches = ", ".join(f"{x * 1000:.0f}" for x in bw[:args.workers])
    print(f"workers (under contention): read {ws['read_ms']:.1f} ms/item wall ({ws['read_cpu_ms']:.1f} ms CPU), "
          f"synthesis {ws['synth_ms']:.1f} ms/anomaly wall ({ws['synth_cpu_ms']:.1f} ms CPU, n={ws['n_synth']}); "
          f"one batch of {args.bs} in one worker: median {b_med * 1000:.0f} ms wall, {bc_med * 1000:.0f} ms CPU "
          f"(first batches incl. texture decode: {first_batches} ms)")
    print(f"headroom = step {step_med:.3f} s / (batch {b_med:.3f} s / {args.workers} workers) "
          f"= {headroom:.1f}x "
          f"({'workers keep up' if headroom > 1 else 'workers fall behind'} in steady state); "
          f"load average {loadavg()} at end")
    return {"wait_share": total_share, "worst_share": max(shares), "headroom": headroom, "read_ms": ws["read_ms"],
            "synth_ms": ws["synth_ms"], "batch_ms": b_med * 1000}


def run_wait(args: argparse.Namespace) -> None:
    if args.threads:
        torch.set_num_threads(args.threads)
    n_images = args.images or (args.steps + 1) * args.bs  # one epoch covers the run by default
    tmp = Path(tempfile.mkdtemp(prefix="bench_wait_"))
    try:
        root = tmp / "pngs"
        t0 = time.perf_counter()
        nbytes = write_folder_dataset(root, n_images, min(args.unique, n_images), args.src_size)
        print(f"# bench_synthesis wait  {time.strftime('%Y-%m-%d %H:%M')}  {cpu_name()}, {os.cpu_count()} CPUs, "
              f"torch {torch.__version__}, {torch.get_num_threads()} threads in the training process")
        print(f"# {args.size} px, batch {args.bs}, {args.workers} workers, {args.steps} timed steps after 1 "
              f"start-up step; TransFusionUNet rgb n_channels {args.n_channels}, AdamW, float32")
        print(f"# data: {n_images} PNGs ({min(args.unique, n_images)} distinct, {args.src_size} px, "
              f"{nbytes / n_images / 1e6:.2f} MB each, written in {time.perf_counter() - t0:.1f} s) read by "
              f"TrainDataset('folder'); built-in texture bank; load average {loadavg()} at start")
        results = {path: wait_one(args, root, tmp / f"logs_{path}", path == "kept") for path in args.paths}
        if len(results) > 1:
            print("\n| data path | wait share | worst step | read ms/item | synthesis ms/anomaly | one batch in one "
                  "worker, ms | headroom |")
            print("|---|---|---|---|---|---|---|")
            for path, r in results.items():
                print(f"| {path} | {r['wait_share']:.2%} | {r['worst_share']:.2%} | {r['read_ms']:.1f} | "
                      f"{r['synth_ms']:.1f} | {r['batch_ms']:.0f} | {r['headroom']:.1f}x |")
    finally:
        if args.keep:
            print(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)


# ----------------------------------------------------------------------------- CLI


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or (argv[0] not in SUBCOMMANDS and argv[0] not in ("-h", "--help")):
        argv.insert(0, "throughput")  # the old command line: bench_synthesis.py --n 40
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog="\n".join(__doc__.splitlines()[1:6]))
    sub = ap.add_subparsers(dest="cmd", required=True)
    tp = sub.add_parser("throughput", help="synthesis samples/s in this process (the default)")
    tp.add_argument("--n", type=int, default=40, help="samples per mode")
    tp.add_argument("--size", type=int, default=256, help="image side (multiple of 32)")
    tp.add_argument("--threads", type=int, default=1, help="torch threads (a DataLoader worker uses 1)")
    pp = sub.add_parser("profile", help="ms of each part of a training item (decode, Perlin, augmentations...)")
    pp.add_argument("--size", type=int, default=256)
    pp.add_argument("--src-size", type=int, default=900, help="side of the PNG read (MVTec AD bottle: 900)")
    pp.add_argument("--dtd-path", default=None, help="DTD root (default: the built-in bank)")
    pp.add_argument("--n", type=int, default=30, help="calls per round")
    pp.add_argument("--rounds", type=int, default=3)
    wp = sub.add_parser("wait", help="share of a training step spent waiting for the DataLoader")
    wp.add_argument("--size", type=int, default=256, help="training image side (multiple of 32)")
    wp.add_argument("--bs", type=int, default=8)
    wp.add_argument("--workers", type=int, default=2)
    wp.add_argument("--steps", type=int, default=4, help="timed steps after the start-up step")
    wp.add_argument("--src-size", type=int, default=1024, help="side of the PNG files (MVTec AD: mostly 1024)")
    wp.add_argument("--unique", type=int, default=16, help="distinct PNGs (the rest are copies)")
    wp.add_argument("--images", type=int, default=0,
                    help="training images (default (steps + 1) * bs: one epoch; fewer adds epoch starts)")
    wp.add_argument("--n-channels", type=int, default=64)
    wp.add_argument("--diffusion-steps", type=int, default=20)
    wp.add_argument("--threads", type=int, default=0, help="torch threads in the training process (0: default)")
    wp.add_argument("--seed", type=int, default=0)
    wp.add_argument("--keep", action="store_true", help="keep the temporary PNG folder and worker logs")
    wp.add_argument("--paths", nargs="+", choices=("kept", "decoded"), default=["kept", "decoded"],
                    help="data paths measured one after the other: images kept decoded (the default of -c train), "
                         "decoded every time (--no-image-cache)")
    wp.add_argument("--fill-threads", type=int, default=1, help="threads decoding the kept images once")
    args = ap.parse_args(argv)
    if args.cmd == "wait":
        run_wait(args)
    elif args.cmd == "profile":
        run_profile(args)
    else:
        run_throughput(args)


if __name__ == "__main__":
    main()
