"""The one prepared GPU check: correctness on CUDA, then training and evaluation speed.

    python benchmarks/gpu_check.py --out gpu_check.json            # on a CUDA machine, ~5 min
    python benchmarks/gpu_check.py --device cpu --size 32 --bs 2 --train-steps 2 --eval-passes 1 \
        --parts reference train eval --out /tmp/gpu_check_cpu.json     # rehearsal of parts 1-3 (bf16 is slow on CPU)
    python benchmarks/gpu_check.py --device cpu --size 64 --bs 8 --parts e2e --e2e-images 16 --e2e-net demo \
        --out /tmp/gpu_check_e2e.json                                  # rehearsal of part 4

What it measures, in this order (each part is timed and written to the JSON as soon as it is done,
so a run cut short still leaves what it measured):
1. correctness: the reference rgb network (tests/fixtures/reference/reference_rgb.pt.xz) run on the
   device: forward and free-running reverse pass against the stored outputs of the original
   (tolerances of tests/fixtures/reference/README.md: 1e-4), in float32 with TF32 off;
2. training steps/s at ``--size`` px, batch ``--bs`` (default 256, 8): float32 (TF32 off, as the
   original), float32 with TF32 on, bf16 autocast; contiguous and channels_last layouts;
   recomputation of norm→SiLU on and off; peak device memory of each;
3. evaluation images/s (the full 18-call reverse pass + scoring, models.scoring.score_batch) at
   batch 8: float32, bf16, both layouts;
4. end to end, `-c train` itself (benchmarks/bench_cli_train.py's train part) on ``--e2e-images``
   900 x 900 PNGs it writes, fed by the machine's cores with the default --workers: samples/s of
   the epochs after the first, the share of the steps spent waiting for data and the projected
   hours for one MVTec AD category (1501 epochs x 240 images), in float32 and --amp bf16, for
   this project, --no-image-cache and the original's data path (serial synthesis in the step,
   4 decoding workers).

The network is the default rgb TransFusionUNet with random weights (seed 0); the timed regions
synchronise the device. Nothing here downloads anything.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402
from baseline_original import load_reference  # noqa: E402
from bench_train import make_batch, train_step  # noqa: E402

from models.runtime import RuntimeOptions, apply_memory_format  # noqa: E402
from models.scoring import score_batch  # noqa: E402
from models.transparency import TransparencyProcess  # noqa: E402
from models.unet import TransFusionUNet, UNetConfig  # noqa: E402

STEPS = 20
PARTS = ("reference", "train", "eval", "e2e")


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def peak_mib(device: torch.device) -> float | None:
    return torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def check_reference(device: torch.device, reference: Path) -> dict:
    """Reference weights on the device vs the original's stored outputs (as tests/test_reference.py)."""
    path = reference / "reference_rgb.pt.xz"
    if not path.exists():
        return {"skipped": f"{path} not found"}
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    ref, net = load_reference(path)
    net = net.to(device).eval()
    process = TransparencyProcess(STEPS, "rgb")
    with torch.inference_mode():
        eps, mean, logits = net(torch.cat((ref["x"], ref["a_mask_in"]), 1).to(device), ref["a_t"].to(device))
        result = process.reverse(net, ref["x"].to(device))
    diffs = {"forward_eps": eps.cpu() - ref["a_predicted_noise"], "forward_mean": mean.cpu() - ref["a_predicted_mean"],
             "forward_logits": logits.cpu() - ref["a_predicted_mask"],
             "reverse_x_final": result.x_final.cpu() - ref["b_x_final"],
             "reverse_masks": result.mask_disc.cpu() - ref["b_all_masks"]}
    out = {k: float(v.abs().max()) for k, v in diffs.items()}
    out["ok"] = all(v <= 1e-4 for v in out.values())
    return out


def time_train(device: torch.device, size: int, bs: int, amp: str, layout: str, recompute: bool,
               tf32: bool, steps: int) -> dict:
    torch.backends.cuda.matmul.allow_tf32 = tf32
    torch.backends.cudnn.allow_tf32 = tf32
    torch.manual_seed(0)
    net = apply_memory_format(TransFusionUNet(UNetConfig()).to(device).train().set_recompute(recompute),
                              layout)
    opt = torch.optim.AdamW(net.parameters(), lr=1e-5)
    batch = tuple(x.to(device) if torch.is_tensor(x) else x for x in make_batch(size, bs))
    reset_peak(device)
    for _ in range(2):  # warm-up: cuDNN autotuning, allocator
        train_step(net, opt, batch, amp)
    sync(device)
    t0 = time.perf_counter()
    for _ in range(steps):
        terms = train_step(net, opt, batch, amp)
    sync(device)
    dt = (time.perf_counter() - t0) / steps
    return {"steps_per_s": 1 / dt, "s_per_step": dt, "peak_mib": peak_mib(device),
            "last_loss": float(terms.total.detach())}


def time_eval(device: torch.device, size: int, bs: int, amp: str, layout: str, passes: int) -> dict:
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    torch.manual_seed(0)
    net = apply_memory_format(TransFusionUNet(UNetConfig()).to(device).eval(), layout)
    process = TransparencyProcess(STEPS, "rgb")
    image = (torch.rand(bs, 3, size, size, generator=torch.Generator().manual_seed(1)) * 2 - 1).to(device)
    reset_peak(device)
    with torch.inference_mode(), RuntimeOptions(amp=amp).autocast(device):
        score_batch(net, process, image)
        sync(device)
        t0 = time.perf_counter()
        for _ in range(passes):
            score_batch(net, process, image)
        sync(device)
    dt = (time.perf_counter() - t0) / passes
    return {"images_per_s": bs / dt, "s_per_batch": dt, "peak_mib": peak_mib(device)}


def end_to_end(args: argparse.Namespace, amp: str) -> dict:
    """`-c train` on written 900 px PNGs: this project, --no-image-cache, original-style (bench_cli_train)."""
    import bench_cli_train as e2e

    from utils.machine.resources import available_cores, default_workers

    out = Path(args.e2e_dir)
    data = e2e.write_data(out / f"data_{args.e2e_images}", args.e2e_images, 900, 16)
    o = e2e.options(["train", "--size", str(args.size), "--bs", str(args.bs), "--net", args.e2e_net,
                     "--device", args.device, "--epochs", str(args.e2e_epochs), "--timeout", "600",
                     "--out", str(out)])
    rows = e2e.part_train(o, data, out / "logs", ("--amp", amp))
    return {"cores": available_cores(), "default_workers": default_workers(torch.device(args.device).type),
            "images": args.e2e_images, **rows}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda")
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--bs", type=int, default=8)
    p.add_argument("--train-steps", type=int, default=10)
    p.add_argument("--eval-passes", type=int, default=3)
    p.add_argument("--reference", default=str(ROOT / "tests" / "fixtures" / "reference"))
    p.add_argument("--out", default="gpu_check.json")
    p.add_argument("--e2e-images", type=int, default=240, help="end to end: training images (an MVTec AD category)")
    p.add_argument("--e2e-epochs", type=int, default=2, help="end to end: epochs (the first is left out)")
    p.add_argument("--e2e-net", choices=("default", "demo"), default="default")
    p.add_argument("--parts", nargs="+", choices=PARTS, default=list(PARTS),
                   help="what to measure (default: all, in this order); e.g. --parts e2e to rerun the last part")
    p.add_argument("--e2e-dir", default=str(ROOT / "benchmarks" / "out" / "gpu_check_e2e"))
    args = p.parse_args()
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        sys.exit("no CUDA device visible; use --device cpu for a rehearsal")
    report: dict = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
                    "torch": torch.__version__, "size": args.size, "batch": args.bs}

    def record(key: str, fn, *a) -> None:
        t0 = time.perf_counter()
        try:
            report[key] = fn(*a)
        except Exception as exc:  # keep measuring the rest; the JSON says what failed
            report[key] = {"error": f"{type(exc).__name__}: {exc}"}
        report[key]["wall_s"] = round(time.perf_counter() - t0, 1)
        print(key, json.dumps(report[key]), flush=True)
        Path(args.out).write_text(json.dumps(report, indent=1))

    if "reference" in args.parts:
        record("reference", check_reference, device, Path(args.reference))
    if "train" in args.parts:
        for amp, tf32 in (("off", False), ("off", True), ("bf16", False)):
            for layout in ("contiguous", "channels_last"):
                record(f"train_{amp}_{'tf32_' if tf32 else ''}{layout}", time_train, device, args.size, args.bs,
                       amp, layout, True, tf32, args.train_steps)
        record("train_off_contiguous_no_recompute", time_train, device, args.size, args.bs, "off",
               "contiguous", False, False, args.train_steps)
    if "eval" in args.parts:
        for amp in ("off", "bf16"):
            for layout in ("contiguous", "channels_last"):
                record(f"eval_{amp}_{layout}", time_eval, device, args.size, args.bs, amp, layout, args.eval_passes)
    if "e2e" in args.parts:
        for amp in ("off", "bf16"):
            record(f"train_end_to_end_{amp}", end_to_end, args, amp)
    print(f"written {args.out}")


if __name__ == "__main__":
    main()
