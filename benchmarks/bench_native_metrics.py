"""Peak memory and time of the MVTec AD 2 pixel metrics at native resolution (utils/evaluation/native_metrics.py).

    python benchmarks/bench_native_metrics.py                    # ~1e9 pixels + the agreement set
    python benchmarks/bench_native_metrics.py --images 20        # a quick look

Synthetic scenario: ``--images`` maps of about ``--height`` x ``--width`` (each side +-100 px, so
sizes differ), each made from its own seed at every pass as the caller of native_pixel_metrics
would: a 256 x 256 working-size map (smooth noise, raised over the defects) resized to the image's
size with models.scoring.map_at_size, and a mask of 0-3 elliptic defects (half the images have
none). Each run is its own subprocess, so its peak resident memory (VmHWM) is the metrics' own
plus the one pair being made; it is reported above the process's baseline (imports, one pair made
and dropped). A second, smaller set (``--small`` images) runs both paths for the largest
|streamed - exact| per metric. The 4096² float32 matmul rate is measured in the same run.
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

METRICS = ("pixel_auroc", "pixel_ap", "aupro", "aupro_005")


def _size(rng, height: int, width: int) -> tuple[int, int]:
    return height + int(rng.integers(-100, 101)), width + int(rng.integers(-100, 101))


def size_of(seed: int, i: int, height: int, width: int) -> tuple[int, int]:
    """Image i's size without making it (as a caller reads it from the image's header)."""
    import numpy as np

    return _size(np.random.default_rng([seed, i]), height, width)


def make_pair(seed: int, i: int, height: int, width: int):
    """Image i's (map, mask) at its own size: the same arrays at every call."""
    import cv2
    import numpy as np

    from models.scoring import map_at_size

    rng = np.random.default_rng([seed, i])
    h, w = _size(rng, height, width)
    mask = np.zeros((h, w), dtype=np.uint8)
    if rng.random() < 0.5:
        for _ in range(int(rng.integers(1, 4))):
            centre = (int(rng.integers(0, w)), int(rng.integers(0, h)))
            axes = (int(rng.integers(5, 150)), int(rng.integers(5, 150)))
            cv2.ellipse(mask, centre, axes, float(rng.uniform(0, 180)), 0, 360, 1, -1)
    small = cv2.resize(mask, (256, 256), interpolation=cv2.INTER_AREA).astype(np.float64)
    coarse = cv2.resize(rng.standard_normal((16, 16)), (256, 256), interpolation=cv2.INTER_CUBIC)
    working = 0.2 * coarse + 0.1 * rng.standard_normal((256, 256)) + 0.6 * small
    return map_at_size(working, (h, w)), mask.astype(bool)


def _status(key: str) -> int:
    """A /proc/self/status field in bytes (VmRSS, VmHWM)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"{key} not in /proc/self/status")


def worker(args: argparse.Namespace) -> None:
    """One run in this process; prints one JSON line."""
    from utils.evaluation.native_metrics import native_pixel_metrics

    make_pair(args.seed, 0, args.height, args.width)  # imports and first-call set-up, then dropped
    baseline = _status("VmRSS")
    passes = []

    def pairs():
        passes.append(time.perf_counter())
        return (make_pair(args.seed, i, args.height, args.width) for i in range(args.images))

    start = time.perf_counter()
    generated = sum(m.size for m, _ in pairs())  # one pass of the generator alone: its share of the time
    t_generate = time.perf_counter() - start
    passes.clear()
    start = time.perf_counter()
    n_pixels = None
    if args.hint:
        n_pixels = sum(h * w for h, w in (size_of(args.seed, i, args.height, args.width) for i in range(args.images)))
    r = native_pixel_metrics(pairs, {"t_0.5": 0.5, "t_0.3": 0.3}, path=args.worker, max_edges=args.max_edges,
                             n_pixels=n_pixels)
    elapsed = time.perf_counter() - start
    out = {"path": r.path, "exact": r.exact, "passes": r.passes, "n_pixels": r.n_pixels, "n_anomalous": r.n_anomalous,
           "seconds": elapsed, "generate_seconds_per_pass": t_generate, "peak_extra_bytes": _status("VmHWM") - baseline,
           "baseline_bytes": baseline, "error_bounds": r.error_bounds, "generated": generated,
           **{name: getattr(r, name) for name in METRICS},
           "seg_f1": {k: v.f1 for k, v in r.seg_f1.items()}}
    print(json.dumps(out))


def run(args: argparse.Namespace, path: str, images: int, max_edges: int, hint: bool = False) -> dict:
    cmd = [sys.executable, __file__, "--worker", path, "--images", str(images), "--height", str(args.height),
           "--width", str(args.width), "--seed", str(args.seed), "--max-edges", str(max_edges)] + \
        (["--hint"] if hint else [])
    done = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def describe(name: str, r: dict) -> str:
    metrics_time = r["seconds"] - r["passes"] * r["generate_seconds_per_pass"]
    return (f"{name:<32} {r['path']:<9} exact={str(r['exact']):<5} passes {r['passes']}  "
            f"{r['n_pixels'] / 1e9:.3f}e9 px ({r['n_anomalous'] / 1e6:.2f}e6 anomalous)  "
            f"{r['seconds']:7.1f} s, of which generating ~{r['passes'] * r['generate_seconds_per_pass']:.1f} s "
            f"(metrics ~{metrics_time:.1f} s)  peak extra {r['peak_extra_bytes'] / 2 ** 30:.2f} GiB  "
            f"bound {max(r['error_bounds'].values(), default=0.0):.1e}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=200, help="maps in the large set (~1e9 pixels at 200)")
    parser.add_argument("--small", type=int, default=24, help="maps in the set both paths run on")
    parser.add_argument("--height", type=int, default=2300)
    parser.add_argument("--width", type=int, default=2100)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-edges", type=int, default=1 << 18, help="the large set's (the default's)")
    parser.add_argument("--small-max-edges", type=int, default=4096,
                        help="also run the small set streamed with this few edges (an approximate result)")
    parser.add_argument("--hint", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--json", type=Path, help="also write the raw results here")
    parser.add_argument("--worker", choices=["auto", "in-memory", "streamed"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(args)

    from utils.machine.yardstick import matmul_gflops

    rate_before = statistics.median(matmul_gflops())
    print(f"4096² float32 matmul: {rate_before:.1f} GFLOP/s (before)")
    results = {
        f"{args.images} maps, auto": run(args, "auto", args.images, args.max_edges),
        f"{args.images} maps, auto + n_pixels": run(args, "auto", args.images, args.max_edges, hint=True),
        f"{args.small} maps, in memory": run(args, "in-memory", args.small, args.max_edges),
        f"{args.small} maps, streamed": run(args, "streamed", args.small, args.max_edges),
        f"{args.small} maps, streamed, {args.small_max_edges} edges": run(args, "streamed", args.small,
                                                                         args.small_max_edges),
    }
    for name, r in results.items():
        print(describe(name, r))
    rate_after = statistics.median(matmul_gflops())
    print(f"4096² float32 matmul: {rate_after:.1f} GFLOP/s (after)")
    exact = results[f"{args.small} maps, in memory"]
    for name, r in list(results.items())[3:]:
        print(f"|streamed - exact| on the small set, {name}:")
        for metric in METRICS:
            print(f"  {metric:<12} {abs(r[metric] - exact[metric]):.2e}  (bound {r['error_bounds'][metric]:.2e}; "
                  f"exact value {exact[metric]:.6f})")
        print(f"  SegF1 (counts, always exact): {r['seg_f1']} vs {exact['seg_f1']}")
    if args.json:
        args.json.write_text(json.dumps({"matmul_gflops": [rate_before, rate_after], "runs": results}, indent=1))


if __name__ == "__main__":
    main()
