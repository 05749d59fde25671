"""ONNX Runtime vs PyTorch on this CPU: one network pass, and the full reverse pass with scoring.

    python benchmarks/bench_onnx.py                 # network pass at 64 and 256 px, batch 1 and 8; reverse at 64 px
    python benchmarks/bench_onnx.py --quick         # a tiny network at 32 px, one round: checks that it runs
    python benchmarks/bench_onnx.py --sizes 64 --batches 1 --reverse-batches 1 --repeats 5

Network: the paper's rgb TransFusionUNet (n_channels 64, ch_mults 1 2 2 2, attention at the two
lowest levels + middle; ``--net tiny``: tests/fixtures/helpers.TINY_NET), random weights (seed 0), float32,
eval mode, random input in [-1, 1]. PyTorch runs it as the project does by default (contiguous
layout, torch.inference_mode); ONNX Runtime runs the file models/onnx_export.export_network writes
for each size (exported once per size, before timing), through models/onnx_session.OnnxNetwork:
CPUExecutionProvider, intra-op threads = torch.get_num_threads(), one inter-op thread, spinning
off under OMP_WAIT_POLICY=PASSIVE, which this script sets as Experiment.py does (unless set).

Measured, per configuration:
- ``pass``: one network call (x_and_mask [B, 4, S, S], t [B]) at each --sizes x --batches;
- ``reverse``: models/scoring.score_batch (the T−2 = 18 network calls, the update, the maps and
  scores: what -c predict runs) at --reverse-size x --reverse-batches, with each backend as the
  network.

Timing: rounds; each round runs every configuration once on both backends, one after the other,
the order alternating from round to round (and between configurations), so a change of load on
this shared machine hits both alike. One warm-up call per configuration and backend before the
first round. Each timed sample repeats the call until --min-time seconds have passed (at least
once) and takes the mean. The table gives the median over rounds of the seconds per call, and
the ratio ONNX Runtime / PyTorch as the median over rounds of the ratio within a round (paired).
"max |Δ|" is the largest difference of the outputs (pass: eps, x0, logits; reverse: the scores).
The 4096² float32 matmul rate (benchmarks/bench_eval.matmul_gflops) is measured at the start and
at the end, so the numbers can be read against what the machine gave at the time.

Results also go to --out (JSON, default benchmarks/out/bench_onnx.json).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics as st
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as Experiment.py, before torch loads libgomp

ROOT = Path(__file__).resolve().parents[1]
HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(HERE))

BACKENDS = ("torch", "onnxruntime")
STEPS = 20  # the paper's T: 18 reverse steps


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", type=int, nargs="+", default=[64, 256], help="network pass: image sizes")
    p.add_argument("--batches", type=int, nargs="+", default=[1, 8], help="network pass: batch sizes")
    p.add_argument("--reverse-size", type=int, default=64, help="reverse pass: image size (0: none)")
    p.add_argument("--reverse-batches", type=int, nargs="+", default=[1, 8], help="reverse pass: batch sizes")
    p.add_argument("--net", choices=("paper", "tiny"), default="paper")
    p.add_argument("--repeats", type=int, default=3, help="rounds")
    p.add_argument("--min-time", type=float, default=2.0, help="seconds per timed sample (at least one call)")
    p.add_argument("--quick", action="store_true",
                   help="a tiny network at 32 px, batch 1 and 2, one round, one call per sample: checks that it runs")
    p.add_argument("--out", type=Path, default=None,
                   help="JSON results (default benchmarks/out/bench_onnx.json; --quick: bench_onnx_quick.json)")
    args = p.parse_args(argv)
    if args.quick:
        args.sizes, args.batches, args.reverse_size, args.reverse_batches = [32], [1, 2], 32, [1, 2]
        args.net, args.repeats, args.min_time = "tiny", 1, 0.0
    if args.out is None:
        args.out = HERE / "out" / ("bench_onnx_quick.json" if args.quick else "bench_onnx.json")
    return args


def build_net(kind: str):
    import torch

    from models.unet import TransFusionUNet, UNetConfig
    from tests.fixtures.helpers import TINY_NET

    torch.manual_seed(0)
    cfg = UNetConfig(mode="rgb", **TINY_NET) if kind == "tiny" else UNetConfig(mode="rgb")
    return TransFusionUNet(cfg).eval()


def export_sizes(net, sizes: list[int], folder: Path) -> dict[int, object]:
    """One exported network per image size, opened in ONNX Runtime; the export's own check printed."""
    from utils.deploy.onnx_export import export_network
    from utils.deploy.onnx_session import OnnxNetwork

    out = {}
    for size in sizes:
        t0 = time.perf_counter()
        check = export_network(net, folder / f"net_{size}.onnx", size, STEPS)
        out[size] = OnnxNetwork(folder / f"net_{size}.onnx")
        print(f"exported {size} px in {time.perf_counter() - t0:.1f} s (probe max |Δ| "
              f"{max(check.max_abs_diff.values()):.1e}); ONNX Runtime intra-op threads {out[size].threads}",
              flush=True)
    return out


def make_calls(net, sessions: dict[int, object], config: tuple[str, int, int]):
    """{backend: () -> outputs} for one configuration, on the same input."""
    import torch

    from models.scoring import ScoringOptions, score_batch
    from models.transparency import TransparencyProcess

    kind, size, batch = config
    g = torch.Generator().manual_seed(size * 100 + batch)
    image = torch.rand(batch, 3, size, size, generator=g) * 2 - 1
    onnx = sessions[size]
    if kind == "pass":
        x = torch.cat((image, (torch.rand(batch, 1, size, size, generator=g) > 0.5).float()), dim=1)
        t = torch.randint(1, STEPS - 1, (batch,), generator=g)

        def torch_pass():
            with torch.inference_mode():
                return net(x, t)

        return {"torch": torch_pass, "onnxruntime": lambda: onnx(x, t)}
    process = TransparencyProcess(STEPS, "rgb")
    return {backend: (lambda n=n: score_batch(n, process, image, ScoringOptions())[0].scores)
            for backend, n in (("torch", net), ("onnxruntime", onnx))}


def timed(call, min_time: float) -> float:
    """Seconds per call: repeat until ``min_time`` has passed (at least once), the mean."""
    n, start = 0, time.perf_counter()
    while True:
        call()
        n += 1
        elapsed = time.perf_counter() - start
        if elapsed >= min_time:
            return elapsed / n


def max_diff(a, b) -> float:
    import torch

    if isinstance(a, torch.Tensor):
        return float((a.double() - b.double()).abs().max())
    return max(max_diff(x, y) for x, y in zip(a, b))


def run(args: argparse.Namespace) -> dict:
    import torch
    from bench_eval import matmul_gflops

    configs = [("pass", s, b) for s in args.sizes for b in args.batches]
    if args.reverse_size:
        configs += [("reverse", args.reverse_size, b) for b in args.reverse_batches]
    matmul_start = st.median(matmul_gflops())
    print(f"4096² float32 matmul: {matmul_start:.0f} GFLOP/s; torch threads {torch.get_num_threads()}", flush=True)
    net = build_net(args.net)
    with tempfile.TemporaryDirectory() as tmp:
        sessions = export_sizes(net, sorted({s for _, s, _ in configs}), Path(tmp))
        calls = {c: make_calls(net, sessions, c) for c in configs}
        diffs = {c: max_diff(calls[c]["torch"](), calls[c]["onnxruntime"]()) for c in configs}  # also the warm-up
        times: dict[tuple, dict[str, list[float]]] = {c: {b: [] for b in BACKENDS} for c in configs}
        for r in range(args.repeats):
            for i, c in enumerate(configs):
                order = BACKENDS if (r + i) % 2 == 0 else BACKENDS[::-1]
                for backend in order:
                    times[c][backend].append(timed(calls[c][backend], args.min_time))
                print(f"round {r + 1}/{args.repeats} {c[0]} {c[1]} px batch {c[2]}: torch "
                      f"{times[c]['torch'][-1]:.3f} s, onnxruntime {times[c]['onnxruntime'][-1]:.3f} s", flush=True)
    matmul_end = st.median(matmul_gflops())
    rows = [{"what": c[0], "size": c[1], "batch": c[2],
             "torch_s": st.median(times[c]["torch"]), "onnxruntime_s": st.median(times[c]["onnxruntime"]),
             "ratio": st.median(o / t for o, t in zip(times[c]["onnxruntime"], times[c]["torch"])),
             "samples": times[c], "max_abs_diff": diffs[c]} for c in configs]
    return {"when": time.strftime("%Y-%m-%d %H:%M:%S"), "machine": platform.processor() or platform.machine(),
            "cpus": os.cpu_count(), "torch": torch.__version__, "onnxruntime": _ort_version(), "net": args.net,
            "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"), "threads": torch.get_num_threads(),
            "repeats": args.repeats, "min_time_s": args.min_time, "loadavg_end": _loadavg(),
            "matmul_gflops": {"start": matmul_start, "end": matmul_end}, "rows": rows}


def _ort_version() -> str:
    import onnxruntime

    return onnxruntime.__version__


def _loadavg() -> float:
    try:
        return float(Path("/proc/loadavg").read_text().split()[0])
    except OSError:
        return float("nan")


def table(result: dict) -> str:
    lines = ["| what | size | batch | PyTorch s | ONNX Runtime s | ONNX Runtime / PyTorch (paired median) "
             "| max abs diff |", "|---|---|---|---|---|---|---|"]
    for r in result["rows"]:
        what = "network pass" if r["what"] == "pass" else "reverse pass + scoring (18 steps)"
        lines.append(f"| {what} | {r['size']} | {r['batch']} | {r['torch_s']:.3f} | {r['onnxruntime_s']:.3f} | "
                     f"**{r['ratio']:.2f}** | {r['max_abs_diff']:.1e} |")
    m = result["matmul_gflops"]
    lines.append(f"\n4096² float32 matmul: {m['start']:.0f} GFLOP/s at the start, {m['end']:.0f} at the end; "
                 f"{result['threads']} threads, OMP_WAIT_POLICY={result['omp_wait_policy']}, load "
                 f"{result['loadavg_end']:.1f} at the end; torch {result['torch']}, "
                 f"onnxruntime {result['onnxruntime']}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    result = run(args)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(table(result))
    print(f"results: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
