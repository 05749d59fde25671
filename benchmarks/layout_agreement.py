"""How far each memory layout moves the scores on real images, against the original-style path.

    python benchmarks/layout_agreement.py            # 5 bottle test images at 256 px, ~7 min on 2 cores
    python benchmarks/layout_agreement.py --n 12 --size 256

The rgb reference weights (``tests/fixtures/reference/reference_rgb.pt.xz``, the original's own
32-channel network) run the full 18-step reverse pass on the real MVTec AD bottle slice
(``../shared/data/mvtec_ad/bottle/test``) four ways: the original-style baseline
(benchmarks/baseline_original.py: einsum attention, no_grad loop, scipy scoring; contiguous
float32), the same in float64 (to tell which images have a trajectory stable under float
noise), the project's default (contiguous) and ``--memory-format channels_last``. Per image it
prints the largest map and score differences against the baseline and how many condition-mask
pixels flipped somewhere along the 18 steps.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))
from baseline_original import baseline_anomaly_maps, baseline_reverse, load_reference, make_baseline  # noqa: E402

from data.io import read_rgb  # noqa: E402
from models.runtime import apply_memory_format  # noqa: E402
from models.scoring import ScoringOptions, score_batch  # noqa: E402
from models.transparency import TransparencyProcess  # noqa: E402

SHARED = ROOT.parent / "shared"


class MaskRecorder(torch.nn.Module):
    """Passes calls through and keeps the 0/1 condition mask fed at every step."""

    def __init__(self, net: torch.nn.Module) -> None:
        super().__init__()
        self.net, self.masks = net, []

    def forward(self, inp: torch.Tensor, t: torch.Tensor):
        self.masks.append(inp[:, -1:].detach().float().clone())
        return self.net(inp, t)


def flips(a: list[torch.Tensor], b: list[torch.Tensor]) -> int:
    return int(sum(int((x != y).sum()) for x, y in zip(a, b)))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n", type=int, default=5, help="test images (sorted by defect and name, spread over defects)")
    p.add_argument("--size", type=int, default=256)
    args = p.parse_args()
    torch.set_num_threads(torch.get_num_threads())
    ref, net = load_reference(ROOT / "tests" / "fixtures" / "reference" / "reference_rgb.pt.xz")
    net.eval()
    process = TransparencyProcess(20, "rgb")
    images = sorted((SHARED / "data" / "mvtec_ad" / "bottle" / "test").glob("*/*.png"))
    picks = [images[round(i * (len(images) - 1) / max(1, args.n - 1))] for i in range(min(args.n, len(images)))]
    kernel, weight = int(ref["c_kernel_size"]), float(ref["c_weight"])
    base = make_baseline(net).eval()
    base64 = make_baseline(net).double().eval()
    layouts = {"default (contiguous)": apply_memory_format(make_copy(net), "contiguous"),
               "channels_last": apply_memory_format(make_copy(net), "channels_last")}
    print(f"{args.size} px, reference weights, {len(picks)} bottle test images; differences against the "
          f"original-style float32 baseline")
    worst = {name: [0.0, 0.0, 0] for name in ["float64 baseline", *layouts]}
    for path in picks:
        x = read_rgb(path, args.size)[None]
        rec = MaskRecorder(base)
        res = baseline_reverse(rec, process, x)
        bmap = baseline_anomaly_maps(x, res, "rgb", kernel, weight)
        rec64 = MaskRecorder(base64)
        res64 = baseline_reverse(rec64, process, x.double())
        m64 = baseline_anomaly_maps(x.double(), res64, "rgb", kernel, weight)
        rows = {"float64 baseline": (m64.final, m64.scores, flips(rec.masks, rec64.masks))}
        for name, layout_net in layouts.items():
            r = MaskRecorder(layout_net)
            maps, _ = score_batch(r, process, x, ScoringOptions(kernel, weight))
            rows[name] = (maps.final, maps.scores, flips(rec.masks, r.masks))
        line = [f"{path.parent.name}/{path.name}: score {float(bmap.scores[0]):.6f}"]
        for name, (final, scores, n_flips) in rows.items():
            dmap = float((final.double() - bmap.final.double()).abs().max())
            dscore = float((scores.double() - bmap.scores.double()).abs().max())
            w = worst[name]
            w[0], w[1], w[2] = max(w[0], dmap), max(w[1], dscore), w[2] + int(n_flips > 0)
            line.append(f"{name}: map {dmap:.1e}, score {dscore:.1e}, {n_flips} flipped mask pixels")
        print(" | ".join(line), flush=True)
    for name, (dmap, dscore, n_unstable) in worst.items():
        print(f"{name}: largest map |Δ| {dmap:.1e}, score |Δ| {dscore:.1e}; "
              f"{n_unstable} of {len(picks)} images with flipped mask pixels")


def make_copy(net: torch.nn.Module) -> torch.nn.Module:
    import copy

    return copy.deepcopy(net).eval()


if __name__ == "__main__":
    main()
