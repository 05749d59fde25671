"""How TransFusion's accuracy and time depend on the reverse schedule: the step-count study.

    python benchmarks/step_study.py                       # ~25-40 min on 2 cores
    python benchmarks/step_study.py --skip-bottle --rounds 2

Models: the demo's three categories (brick, grass, gravel) trained with the demo's recipe
(`python Experiment.py -c demo`; its weights in experiments/demo are reused when present, they
are seeded and the training images do not depend on the test-set size), tested on enlarged test
sets from the demo's own generator: 60 good and 60 defective images (12 per defect type) per
category, so one swapped pair moves image AUROC by 1/3600 < 0.03 points. Also the real MVTec AD
bottle slice in ../shared/data (12 train, 12 test images: reported, not to judge by), trained with
the demo network at 64 px for --bottle-epochs epochs.

Schedules: --eval-steps K for K in 18 (the default) 12 9 6 4 3 2 1, and --early-stop N for N in
1 2 3 (with all 18 steps). Accuracy (image AUROC, AUPRO, pixel AUROC) on the whole test set;
seconds per image from timed batches of 8 images, schedules interleaved in rounds with
alternating order (so a change of machine load hits all of them alike), the median per schedule;
the 4096² float32 matmul rate is measured at the start and the end of the same run.

Writes (under --out, default benchmarks/out/step_study): study.json, study.csv, study.md (the
table) and study.png (AUROC and AUPRO against relative time, per category).
"""
from __future__ import annotations

import argparse
import json
import statistics as st
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

SCHEDULES: list[tuple[str, int | None, int | None]] = (
    [(f"K={k}", k, None) for k in (18, 12, 9, 6, 4, 3, 2, 1)] + [(f"early stop N={n}", None, n) for n in (1, 2, 3)])
DEMO_CATEGORIES = ("brick", "grass", "gravel")


def ensure_demo_models(log_path: Path, run: str) -> Path:
    """The demo's trained weights: reused when present, else trained by the demo itself."""
    import Experiment

    models = log_path / run / "models"
    if not all((models / f"{c}_model.pkl").is_file() for c in DEMO_CATEGORIES):
        rc = Experiment.main(["-c", "demo", "-r", run, "--log-path", str(log_path), "--quiet"])
        if rc != 0:
            raise SystemExit(f"the demo run failed (exit {rc})")
    return log_path / run


def train_bottle(log_path: Path, epochs: int) -> Path:
    """The demo network at 64 px on the real bottle slice (computed foreground masks)."""
    import Experiment
    from utils.demo.recipe import DEMO_SETTINGS, recipe_flags

    run = log_path / "step_study_bottle"
    if not (run / "models" / "bottle_model.pkl").is_file():
        # the demo's recipe, but masks computed for the bottle (an object) and --bottle-epochs epochs
        settings = {**DEMO_SETTINGS, "epoch_num": epochs, "no_fg_masks": False}
        argv = ["-c", "train", "-r", run.name, "--log-path", str(log_path), "-d", str(ROOT.parent / "shared/data/mvtec_ad"),
                "--category", "bottle", *recipe_flags(settings), "--quiet"]
        if Experiment.main(argv) != 0:
            raise SystemExit("training on the bottle slice failed")
    return run


def load_category(run: Path, data_root: Path, category: str, size: int):
    """(network, process, images [N, C, S, S], masks [N, S, S] bool, labels [N])."""
    import torch

    from data.datasets import TestDataset
    from models.runtime import RuntimeOptions
    from models.transparency import TransparencyProcess
    from utils.run.network import load_network
    from utils.run.paths import RunPaths

    net, meta = load_network(RunPaths(run.parent, run.name), category, "rgb", None, RuntimeOptions(), torch.device("cpu"))
    test = TestDataset("mvtec", data_root, category, "rgb", size)
    items = [test[i] for i in range(len(test))]
    images = torch.stack([it["image"] for it in items])
    masks = torch.stack([it["mask"][0] for it in items]).numpy() > 0.5
    labels = np.array([it["label"] for it in items])
    return net, TransparencyProcess(meta.get("diffusion_num_steps", 20), "rgb"), images, masks, labels


def accuracy(net, process, images, masks, labels, k: int | None, n: int | None, batch: int = 8) -> dict:
    from models.scoring import ScoringOptions, score_batch
    from utils.evaluation.metrics import image_auroc, pixel_metrics

    options = ScoringOptions(eval_steps=k, early_stop=n)
    finals, scores, steps = [], [], []
    for i in range(0, len(images), batch):
        maps, _ = score_batch(net, process, images[i:i + batch], options)
        finals.append(maps.final.numpy())
        scores.append(maps.scores.numpy())
        steps.append(maps.steps_run.numpy())
    final = np.concatenate(finals)
    pixel = pixel_metrics(final, masks, curve_points=0)
    return {"image_auroc": image_auroc(np.concatenate(scores), labels), "aupro": pixel["aupro"],
            "pixel_auroc": pixel["pixel_auroc"], "mean_steps": float(np.concatenate(steps).mean())}


def time_schedules(cases: dict, rounds: int, batches: int, batch: int = 8) -> dict[tuple[str, str], float]:
    """Median seconds per image per (category, schedule), interleaved in rounds."""
    from models.scoring import ScoringOptions, score_batch

    times: dict[tuple[str, str], list[float]] = {}
    order = [(cat, sched) for cat in cases for sched in SCHEDULES]
    for r in range(rounds):
        for cat, (name, k, n) in (order if r % 2 == 0 else order[::-1]):
            net, process, images = cases[cat][:3]
            sub = images[: batches * batch]
            t0 = time.perf_counter()
            for i in range(0, len(sub), batch):
                score_batch(net, process, sub[i:i + batch], ScoringOptions(eval_steps=k, early_stop=n))
            times.setdefault((cat, name), []).append((time.perf_counter() - t0) / len(sub))
        print(f"timing round {r + 1}/{rounds} done", flush=True)
    return {key: st.median(v) for key, v in times.items()}


def plot(rows: list[dict], path: Path) -> None:
    """AUROC and AUPRO (y, percent) against time relative to 18 steps (x), one colour per category."""
    import cv2

    from utils.core.atomic import atomic_write_bytes

    w, h, left, right, top, bottom = 1100, 520, 70, 20, 50, 60
    img = np.full((h, w, 3), 255, np.uint8)
    panels = [("image AUROC", "image_auroc"), ("AUPRO", "aupro")]
    colours = {"brick": (40, 60, 200), "grass": (40, 160, 40), "gravel": (160, 110, 40), "bottle": (150, 150, 150)}
    pw = (w - left - right) // 2
    cats = sorted({r["category"] for r in rows}, key=lambda c: (c == "bottle", c))
    for p, (title, key) in enumerate(panels):
        x0, x1, y0, y1 = left + p * pw, left + (p + 1) * pw - 80, top, h - bottom
        vals = [100 * r[key] for r in rows if r[key] is not None]
        lo = max(0.0, np.floor(min(vals) / 5) * 5)
        cv2.rectangle(img, (x0, y0), (x1, y1), (0, 0, 0), 1)
        for v in np.linspace(lo, 100, 6):
            y = int(y1 - (v - lo) / (100 - lo) * (y1 - y0))
            cv2.line(img, (x0, y), (x1, y), (225, 225, 225), 1)
            cv2.putText(img, f"{v:.0f}", (x0 - 36, y + 5), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (0, 0, 0), 1, cv2.LINE_AA)
        for v in np.linspace(0, 1, 6):
            x = int(x0 + v * (x1 - x0))
            cv2.putText(img, f"{v:.1f}", (x - 10, y1 + 18), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (0, 0, 0), 1, cv2.LINE_AA)
        cv2.putText(img, f"{title} vs time / 18-step time", (x0, y0 - 15), cv2.FONT_HERSHEY_SIMPLEX, 0.55,
                    (0, 0, 0), 1, cv2.LINE_AA)
        for cat in cats:
            pts = sorted((r["time_ratio"], 100 * r[key], r["schedule"]) for r in rows
                         if r["category"] == cat and r[key] is not None and r["schedule"].startswith("K="))
            xy = [(int(x0 + min(t, 1.0) * (x1 - x0)), int(y1 - (v - lo) / (100 - lo) * (y1 - y0))) for t, v, _ in pts]
            for a, b in zip(xy, xy[1:]):
                cv2.line(img, a, b, colours.get(cat, (0, 0, 0)), 2, cv2.LINE_AA)
            for (t, v, name), (x, y) in zip(pts, xy):
                cv2.circle(img, (x, y), 3, colours.get(cat, (0, 0, 0)), -1, cv2.LINE_AA)
                cv2.putText(img, name[2:], (x + 4, y - 4), cv2.FONT_HERSHEY_SIMPLEX, 0.33, colours.get(cat, (0, 0, 0)),
                            1, cv2.LINE_AA)
            for t, v, name in ((r["time_ratio"], 100 * r[key], r["schedule"]) for r in rows
                               if r["category"] == cat and r[key] is not None and r["schedule"].startswith("early")):
                x, y = int(x0 + min(t, 1.0) * (x1 - x0)), int(y1 - (v - lo) / (100 - lo) * (y1 - y0))
                cv2.drawMarker(img, (x, y), colours.get(cat, (0, 0, 0)), cv2.MARKER_TILTED_CROSS, 9, 2)
    for i, cat in enumerate(cats):
        cv2.putText(img, cat + (" (12 test images)" if cat == "bottle" else ""), (left + 150 * i, h - 15),
                    cv2.FONT_HERSHEY_SIMPLEX, 0.5, colours.get(cat, (0, 0, 0)), 2, cv2.LINE_AA)
    cv2.putText(img, "dots: --eval-steps K (label K); crosses: --early-stop N", (left + 620, h - 15),
                cv2.FONT_HERSHEY_SIMPLEX, 0.45, (0, 0, 0), 1, cv2.LINE_AA)
    ok, buf = cv2.imencode(".png", img)
    atomic_write_bytes(path, buf.tobytes())


def table(rows: list[dict]) -> str:
    lines = ["| category | schedule | mean steps | s/image | time vs 18 steps | image AUROC | AUPRO | pixel AUROC |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        pct = lambda v: "n/a" if v is None else f"{100 * v:.2f}"  # noqa: E731
        lines.append(f"| {r['category']} | {r['schedule']} | {r['mean_steps']:.2f} | {r['s_per_image']:.3f} | "
                     f"{r['time_ratio']:.2f}x | {pct(r['image_auroc'])} | {pct(r['aupro'])} | {pct(r['pixel_auroc'])} |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "out" / "step_study")
    p.add_argument("--log-path", type=Path, default=ROOT / "experiments")
    p.add_argument("--demo-run", default="demo", help="run folder of the demo's trained weights (made if absent)")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--timed-batches", type=int, default=2, help="batches of 8 images timed per schedule and round")
    p.add_argument("--bottle-epochs", type=int, default=200)
    p.add_argument("--skip-bottle", action="store_true")
    p.add_argument("--replot", action="store_true", help="only redraw study.png from study.json")
    args = p.parse_args()
    if args.replot:
        plot(json.loads((args.out / "study.json").read_text())["rows"], args.out / "study.png")
        return

    from data.demo_dataset import build_demo_dataset
    from utils.demo.recipe import DEMO_DATA, DEMO_SETTINGS
    from utils.machine.yardstick import matmul_gflops

    mm_start = st.median(matmul_gflops())
    print(f"4096x4096 float32 matmul: {mm_start:.1f} GFLOP/s", flush=True)
    demo_run = ensure_demo_models(args.log_path, args.demo_run)
    data = build_demo_dataset(args.out / "data", **{**DEMO_DATA, "n_test_good": 60, "n_test_per_defect": 12})
    size = DEMO_SETTINGS["img_size"]
    cases = {cat: load_category(demo_run, data, cat, size) for cat in DEMO_CATEGORIES}
    if not args.skip_bottle:
        cases["bottle"] = load_category(train_bottle(args.log_path, args.bottle_epochs),
                                        ROOT.parent / "shared/data/mvtec_ad", "bottle", size)
    results = {}
    for cat, (net, process, images, masks, labels) in cases.items():
        for name, k, n in SCHEDULES:
            results[(cat, name)] = accuracy(net, process, images, masks, labels, k, n)
        print(f"[{cat}] accuracy of {len(SCHEDULES)} schedules on {len(images)} images done", flush=True)
    seconds = time_schedules(cases, args.rounds, args.timed_batches)
    mm_end = st.median(matmul_gflops())
    rows = []
    for (cat, name), acc in results.items():
        rows.append({"category": cat, "schedule": name, **acc, "s_per_image": seconds[(cat, name)],
                     "time_ratio": seconds[(cat, name)] / seconds[(cat, "K=18")]})
    args.out.mkdir(parents=True, exist_ok=True)
    meta = {"matmul_gflops_start": mm_start, "matmul_gflops_end": mm_end, "rounds": args.rounds,
            "timed_images_per_round": 8 * args.timed_batches, "date": time.strftime("%Y-%m-%d %H:%M")}
    (args.out / "study.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n")
    keys = list(rows[0])
    (args.out / "study.csv").write_text(",".join(keys) + "\n" + "".join(",".join(str(r[k]) for k in keys) + "\n"
                                                                         for r in rows))
    text = table(rows)
    (args.out / "study.md").write_text(text + "\n")
    plot(rows, args.out / "study.png")
    print(text)
    print(f"4096x4096 float32 matmul: {mm_start:.1f} GFLOP/s at the start, {mm_end:.1f} at the end; "
          f"written to {args.out}")


if __name__ == "__main__":
    main()
