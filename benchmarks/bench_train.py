"""One training step (forward + transfusion_loss + backward + AdamW step), current vs baseline attention.

    python benchmarks/bench_train.py                     # 256 px, batch 8, 1 warm-up + 2 timed steps
    python benchmarks/bench_train.py --quick             # 64 px, batch 8, 1 warm-up + 3 timed steps
    python benchmarks/bench_train.py --size 128 --bs 4 --repeats 3
    python benchmarks/bench_train.py --size 128 --variants current baseline no_recompute channels_last malloc_reuse bf16

Network (--net): ``default``, the paper's rgb TransFusionUNet (n_channels 64, ch_mults 1 2 2 2,
attention at the two lowest levels + middle), or ``demo``, the demo's CPU-sized one
(utils/demo/recipe.py: 32 channels, ch_mults 1 2 2, attention at the lowest level, 1 block per level);
random weights (seed 0), float32, train mode, AdamW (lr 1e-5). GFLOP/s: the FLOPs of one
baseline step (forward + backward, FlopCounterMode at batch 1, times the batch) per second,
beside the 4096² float32 matmul rate measured at the start and end of the same run.
Input: a fixed synthetic batch (x0 ~ U(-1, 1); the first half of the batch carries a disc
anomaly M with ε = M·U(-1, 1) and a slightly shifted disc as M_c; t drawn with seed 3); the
same batch every step, prepared outside the timed region.

Variants, each in its own fresh subprocess (so its peak memory is its own):
- ``current``        the project's defaults: models/unet.py (SDPA attention, norm→SiLU outputs
                     recomputed in backward, models/recompute.py), the contiguous layout (the default
                     --memory-format), utils.allocator.tune_allocator() as the CLI calls it
- ``baseline``       benchmarks/baseline_original.py: the original's einsum attention, every
                     activation stored, contiguous layout, glibc's default allocator settings
- ``baseline_spin``  the baseline under libgomp's own thread wait policy, as the original runs
                     (it sets no OMP_WAIT_POLICY); ``baseline`` runs under the CLI's PASSIVE
- ``no_recompute``   current without the recomputation (set_recompute(False))
- ``recompute_<n>mib`` current, recomputing only norm→SiLU inputs of at least n MiB
                     (models/recompute.py RECOMPUTE_MIN_BYTES; smaller ones take plain autograd)
- ``omp_default``    current with libgomp's own thread wait policy instead of the CLI's PASSIVE
- ``spin_<n>``       current with OMP_WAIT_POLICY unset and GOMP_SPINCOUNT=n (threads spin that
                     many times before sleeping)
- ``channels_last``  current in the channels_last layout (--memory-format channels_last)
- ``malloc_reuse``   current + glibc keeping freed memory (--malloc-reuse)
- ``bf16``           current under bf16 autocast (--amp bf16; changes the numbers)

Peak memory is VmHWM from /proc/self/status of the subprocess (the RSS high-water mark of
its own address space); getrusage's ru_maxrss inherits the parent's RSS at exec on Linux,
see bench_eval.py. Before timing, a small in-process check compares the losses and the
gradients of current and baseline (64 px, batch 2).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics as st
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(HERE))

from bench_eval import add_worker_options, apply_omp_choice, cpu_name, loadavg, proc_status_kib, run_worker_process  # noqa: E402

VARIANTS = ("current", "baseline", "baseline_spin", "no_recompute", "recompute_1mib", "recompute_4mib", "recompute_16mib",
            "omp_default", "spin_1k", "spin_3k", "spin_10k", "spin_30k", "spin_100k", "channels_last", "malloc_reuse", "bf16")
STEPS = 20


def make_batch(size: int, bs: int, seed: int = 3):
    """(process, x_t, t, x0, eps, mask, mask_c) — a fixed synthetic training batch."""
    import torch

    from models.transparency import TransparencyProcess

    process = TransparencyProcess(STEPS, "rgb")
    g = torch.Generator().manual_seed(seed)
    x0 = torch.rand(bs, 3, size, size, generator=g) * 2 - 1
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    mask = torch.zeros(bs, 1, size, size)
    mask_c = torch.zeros(bs, 1, size, size)
    for i in range(max(1, bs // 2)):
        cy, cx = (torch.rand(2, generator=g) * size * 0.6 + size * 0.2).tolist()
        r = size * (0.08 + 0.1 * float(torch.rand(1, generator=g)))
        mask[i, 0] = (((yy - cy) ** 2 + (xx - cx) ** 2) <= r * r).float()
        mask_c[i, 0] = (((yy - cy - 2) ** 2 + (xx - cx + 2) ** 2) <= (0.75 * r) ** 2).float()
    eps = mask * (torch.rand(bs, 3, size, size, generator=g) * 2 - 1)
    t = process.sample_t(bs, g)
    x_t = process.q_sample(x0, eps, mask, t)
    mask_c = mask_c * (t != STEPS - 1).float().view(-1, 1, 1, 1)
    return process, x_t, t, x0, eps, mask, mask_c


def net_config(net: str, n_channels: int):
    """The UNetConfig of --net default (with --n-channels) or demo."""
    from models.unet import UNetConfig
    from utils.demo.recipe import DEMO_SETTINGS as d

    if net == "demo":
        return UNetConfig(n_channels=d["unet_channel_num"], ch_mults=tuple(d["unet_ch_mults"]),
                          attn=tuple(d["unet_attn"]), group_conv=tuple(d["unet_group_conv"]), n_blocks=d["unet_n_blocks"])
    return UNetConfig(n_channels=n_channels)


def step_gflop(net: str, n_channels: int, size: int) -> float:
    """GFLOP of one training step (forward + backward) of the baseline network per image."""
    import torch
    from baseline_original import make_baseline
    from torch.utils.flop_counter import FlopCounterMode

    from models.losses import transfusion_loss
    from models.unet import TransFusionUNet

    torch.manual_seed(0)
    m = make_baseline(TransFusionUNet(net_config(net, n_channels)).train().set_recompute(False), inplace=True)
    process, x_t, t, x0, eps, mask, mask_c = make_batch(size, 1)
    with FlopCounterMode(display=False) as fc:
        eps_hat, x0_hat, logits = m(torch.cat((x_t, mask_c), 1), t)
        transfusion_loss(process, x_t, t, x0, eps, mask, eps_hat, x0_hat, logits).total.backward()
    return fc.get_total_flops() / 1e9


def build_net(variant: str, n_channels: int, net_kind: str = "default"):
    import torch
    from baseline_original import make_baseline

    from models.runtime import apply_memory_format
    from models.unet import TransFusionUNet
    from utils.machine.allocator import tune_allocator

    torch.manual_seed(0)
    net = TransFusionUNet(net_config(net_kind, n_channels)).train()
    if variant.startswith("baseline"):
        return make_baseline(net.set_recompute(False), inplace=True)
    if variant == "no_recompute":
        net.set_recompute(False)
    if variant.startswith("recompute_"):
        import models.recompute as recompute

        recompute.RECOMPUTE_MIN_BYTES = int(variant.split("_")[1].removesuffix("mib")) * 2**20
    tune_allocator(reuse_large_blocks=variant == "malloc_reuse")  # what Experiment.py does
    return apply_memory_format(net, "channels_last" if variant == "channels_last" else "contiguous")


def train_step(net, opt, batch, amp: str = "off"):
    import torch

    from models.losses import transfusion_loss
    from models.runtime import RuntimeOptions

    process, x_t, t, x0, eps, mask, mask_c = batch
    inp = torch.cat((x_t, mask_c), 1)
    opt.zero_grad(set_to_none=True)
    with RuntimeOptions(amp=amp).autocast(x_t.device):  # gpu_check runs this on CUDA too
        eps_hat, x0_hat, logits = net(inp, t)
    terms = transfusion_loss(process, x_t, t, x0, eps, mask, eps_hat.float(), x0_hat.float(), logits.float())
    terms.total.backward()
    opt.step()
    return terms


def worker(args: argparse.Namespace) -> None:
    import torch
    if args.threads:
        torch.set_num_threads(args.threads)
    net = build_net(args.variant, args.n_channels, args.net)
    opt = torch.optim.AdamW(net.parameters(), lr=1e-5)
    batch = make_batch(args.size, args.bs)
    rss_ready = proc_status_kib("VmRSS")
    load0 = loadavg()
    amp = "bf16" if args.variant == "bf16" else "off"
    t0 = time.perf_counter()
    losses = [float(train_step(net, opt, batch, amp).total.detach())]
    warm = time.perf_counter() - t0
    times = []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        terms = train_step(net, opt, batch, amp)
        times.append(time.perf_counter() - t0)
        losses.append(float(terms.total.detach()))
    print(json.dumps({"times": times, "warmup": warm, "losses": losses, "rss_ready_kib": rss_ready,
                      "vmhwm_kib": proc_status_kib("VmHWM"), "load": [load0, loadavg()],
                      "threads": torch.get_num_threads()}))


def check_agreement(size: int = 64, bs: int = 2, n_channels: int = 32) -> dict[str, float]:
    """Losses and gradients of one step, current vs baseline, same weights and batch."""
    import torch

    from models.losses import transfusion_loss

    batch = make_batch(size, bs)
    process, x_t, t, x0, eps, mask, mask_c = batch
    out, grads = {}, []
    for v in ("current", "baseline"):
        net = build_net(v, n_channels)
        eps_hat, x0_hat, logits = net(torch.cat((x_t, mask_c), 1), t)
        terms = transfusion_loss(process, x_t, t, x0, eps, mask, eps_hat, x0_hat, logits)
        terms.total.backward()
        out[v] = terms.as_dict()
        grads.append({k: p.grad.detach().clone() for k, p in net.named_parameters() if p.grad is not None})
    loss_rel = max(abs(out["current"][k] - out["baseline"][k]) / max(abs(out["baseline"][k]), 1e-12)
                   for k in out["current"])
    gmax = max(float((grads[0][k] - grads[1][k]).abs().max()) for k in grads[1])
    gscale = max(float(g.abs().max()) for g in grads[1].values())
    print(f"check ({size} px, batch {bs}, n_channels {n_channels}): loss terms max rel |Δ| {loss_rel:.2e}, "
          f"gradients max |Δ| {gmax:.2e} (largest |grad| {gscale:.2e})")
    if not (loss_rel <= 1e-4 and gmax <= 1e-4 * max(1.0, gscale)):
        raise AssertionError("current and baseline training steps disagree beyond 1e-4")
    return {"loss_rel": loss_rel, "grad_abs": gmax}


def run_worker(args: argparse.Namespace, variant: str) -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", "--variant", variant,
           "--size", str(args.size), "--bs", str(args.bs), "--repeats", str(args.repeats),
           "--n-channels", str(args.n_channels), "--net", args.net, "--threads", str(args.threads)]
    spin = variant.startswith("spin_")
    if spin:
        os.environ["GOMP_SPINCOUNT"] = variant.split("_")[1].replace("k", "000")
    try:
        active = variant in ("omp_default", "baseline_spin") or spin
        return run_worker_process(cmd, args, variant, omp="default" if active else None)
    finally:
        os.environ.pop("GOMP_SPINCOUNT", None)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--bs", type=int, default=8)
    p.add_argument("--repeats", type=int, default=2, help="timed steps after one warm-up step")
    p.add_argument("--quick", action="store_true", help="64 px, 3 timed steps")
    p.add_argument("--variants", nargs="+", default=["current", "baseline"], choices=VARIANTS)
    p.add_argument("--n-channels", type=int, default=64)
    p.add_argument("--net", choices=("default", "demo"), default="default")
    p.add_argument("--rounds", type=int, default=1, help="run every variant this many times, alternating the order")
    add_worker_options(p)
    args = p.parse_args()
    if args.worker:
        worker(args)
        return
    apply_omp_choice(args)
    if args.quick:
        args.size, args.repeats = 64, 3

    import torch

    from utils.machine.yardstick import matmul_gflops

    start = time.perf_counter()
    variants = list(dict.fromkeys(["current", "baseline"] + args.variants))
    mm_start = max(matmul_gflops())
    print(f"# bench_train  {time.strftime('%Y-%m-%d %H:%M')}  {cpu_name()}, {os.cpu_count()} CPUs, "
          f"torch {torch.__version__}, {args.threads or torch.get_num_threads()} threads, OMP_WAIT_POLICY "
          f"{os.environ.get('OMP_WAIT_POLICY', '(unset)')}, "
          f"load average {loadavg():.2f}")
    print(f"# one step = forward + transfusion_loss + backward + AdamW; {args.size} px, batch {args.bs}, "
          f"{args.net} network" + (f" (n_channels {args.n_channels})" if args.net == "default" else "")
          + f", float32; 1 warm-up + {args.repeats} timed steps per variant")
    gflop = step_gflop(args.net, args.n_channels, args.size) * args.bs
    print(f"# 4096x4096 float32 matmul {mm_start:.1f} GFLOP/s (best of 5); one step {gflop:.1f} GFLOP")
    if not args.no_check:
        check_agreement()
    res: dict[str, dict] = {}
    for r in range(args.rounds):  # rounds in alternating order, so a change of load hits every variant
        for v in (variants if r % 2 == 0 else variants[::-1]):
            o = run_worker(args, v)
            print(f"  round {r + 1} {v:13s} warm-up {o['warmup']:.2f} s, steps " + " ".join(f"{x:.2f}" for x in o["times"])
                  + f" s, peak {o['vmhwm_kib'] / 1024:.0f} MiB, load {o['load'][0]:.1f}-{o['load'][1]:.1f}, "
                  f"losses " + " ".join(f"{x:.5f}" for x in o["losses"]), flush=True)
            if v in res:  # times of every round; the first round's memory figures and losses
                res[v]["times"] += o["times"]
            else:
                res[v] = o

    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), "results": res}, indent=1))
    cur = res["current"]
    cur_med, cur_peak = st.median(cur["times"]), cur["vmhwm_kib"]
    cur_work = cur["vmhwm_kib"] - cur["rss_ready_kib"]
    mm_end = max(matmul_gflops())
    hdr = ("| size | batch | variant | timed steps | s/step median | min | max | time/current (median) "
           "| time/current (best) | GFLOP/s (best) | % of matmul | peak RSS MiB | peak/current | peak - ready MiB "
           "| (peak - ready)/current | first-step loss |")
    print()
    print(hdr)
    print("|" + "---|" * (hdr.count("|") - 1))
    for v in variants:
        o = res[v]
        med = st.median(o["times"])
        work = o["vmhwm_kib"] - o["rss_ready_kib"]
        print(f"| {args.size} | {args.bs} | {v} | {len(o['times'])} | {med:.2f} | {min(o['times']):.2f} "
              f"| {max(o['times']):.2f} | {med / cur_med:.2f} | {min(o['times']) / min(cur['times']):.2f} "
              f"| {gflop / min(o['times']):.0f} | {100 * gflop / min(o['times']) / max(mm_start, mm_end):.0f} "
              f"| {o['vmhwm_kib'] / 1024:.0f} | {o['vmhwm_kib'] / cur_peak:.2f} | {work / 1024:.0f} "
              f"| {work / cur_work:.2f} | {o['losses'][0]:.6f} |")
    base = res["baseline"]
    print()
    print(f"ratios current/baseline: time {cur_med / st.median(base['times']):.2f} (median), "
          f"{min(cur['times']) / min(base['times']):.2f} (best); "
          f"peak RSS {cur_peak / base['vmhwm_kib']:.2f}; "
          f"peak - ready {cur_work / (base['vmhwm_kib'] - base['rss_ready_kib']):.2f}. "
          f"Matmul {mm_start:.0f} / {mm_end:.0f} GFLOP/s at start / end. Total wall {time.perf_counter() - start:.0f} s.")


if __name__ == "__main__":
    main()
