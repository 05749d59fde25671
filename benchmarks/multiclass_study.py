"""Per-category networks vs one multi-class network vs one class-conditioned network, at demo scale.

    python benchmarks/multiclass_study.py                     # 3 seeds: hours on 2 cores
    python benchmarks/multiclass_study.py --seeds 3 --epochs 2   # a quick rehearsal

Data: the demo's generator (data/demo_dataset.py) with its three categories (brick, grass,
gravel) and a fourth cut the same way from scikit-image's moon texture; the built-in anomaly
texture bank leaves all four out (the dataset's manifest says what it was cut from), so an
anomaly never looks like a normal surface. Recipe: the demo's (utils/demo/recipe.py), the same
number of epochs for every network, so a multi-class network sees as many images in all as the
four per-category networks together.

Per seed (--seed of -c train), three configurations, each trained and tested through the
command line in its own process: `-c train --category brick,grass,gravel,moon` then `-c test`
(four networks), `-c train_multiclass` then `-c test_multiclass`, and the same with
`--class-embedding`. The configurations' order rotates with the seed, so a change of machine load
does not hit one of them alone; training time is the wall time of its -c train process. The
4096² float32 matmul rate is measured at the start and at the end.

Writes (under --out, default benchmarks/out/multiclass_study): study.json (every figure), study.md
(mean ± sd over the seeds per category and for the mean over categories) and study.png. A study
that is stopped continues where it stopped (runs with results are not repeated).
"""
from __future__ import annotations

import argparse
import json
import statistics as st
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

STUDY_CATEGORIES = ("brick", "grass", "gravel", "moon")
CONFIGS = ("per-category", "multi-class", "class-conditioned")
METRICS = (("image_auroc", "image AUROC"), ("aupro", "AUPRO"), ("pixel_ap", "pixel AP"))


def _run(argv: list[str]) -> float:
    """``python Experiment.py argv`` in its own process; its wall time in seconds."""
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, str(ROOT / "Experiment.py"), *argv], cwd=ROOT, capture_output=True,
                          text=True)
    if proc.returncode != 0:
        raise SystemExit(f"failed (exit {proc.returncode}): Experiment.py {' '.join(argv)}\n{proc.stderr[-2000:]}")
    return time.perf_counter() - t0


def _commands(config: str, run: str, seed: int, common: list[str]) -> tuple[list[str], list[str], Path]:
    """(the training argv, the test argv, where its per-category results lie) of one configuration."""
    cats = ",".join(STUDY_CATEGORIES)
    flags = ["-r", run, "--seed", str(seed), *common]
    if config == "per-category":
        return (["-c", "train", "--category", cats, *flags], ["-c", "test", "--category", cats, *flags], Path())
    extra = ["--class-embedding"] if config == "class-conditioned" else []
    return (["-c", "train_multiclass", *extra, *flags], ["-c", "test_multiclass", *flags], Path("multiclass"))


def run_config(config: str, seed: int, data: Path, logs: Path, epochs: int) -> dict:
    """Train and test one configuration for one seed (or read what an earlier run of the study left)."""
    from utils.demo.recipe import DEMO_SETTINGS, recipe_flags

    run = f"{config.split('-')[0]}_s{seed}"
    record_path = logs / run / "study_record.json"
    if record_path.is_file():
        return json.loads(record_path.read_text())
    recipe = recipe_flags({**DEMO_SETTINGS, "epoch_num": epochs})
    common = ["-d", str(data), "--log-path", str(logs), *recipe, "--quiet", "--device", "cpu"]
    train, test, sub = _commands(config, run, seed, common)
    train_s = _run(train + ["--overwrite"])
    _run(test)
    metrics = {}
    for cat in STUDY_CATEGORIES:
        summary = json.loads((logs / run / "results" / sub / cat / "summary.json").read_text())
        metrics[cat] = {k: summary["metrics"][k] for k, _ in METRICS}
    record = {"config": config, "seed": seed, "train_seconds": train_s, "metrics": metrics}
    record_path.write_text(json.dumps(record, indent=2))
    return record


def _mean_sd(values: list[float]) -> tuple[float, float]:
    return float(np.mean(values)), float(st.stdev(values)) if len(values) > 1 else 0.0


def summarise(records: list[dict]) -> dict:
    """Per configuration: per category and for the mean over categories, mean and sd over seeds."""
    out: dict = {}
    for config in CONFIGS:
        recs = [r for r in records if r["config"] == config]
        if not recs:
            continue
        rows: dict = {}
        for cat in (*STUDY_CATEGORIES, "mean"):
            rows[cat] = {}
            for key, _ in METRICS:
                vals = [(np.mean([r["metrics"][c][key] for c in STUDY_CATEGORIES]) if cat == "mean"
                         else r["metrics"][cat][key]) for r in recs]
                rows[cat][key] = _mean_sd([100 * v for v in vals])
        rows["train_minutes"] = _mean_sd([r["train_seconds"] / 60 for r in recs])
        out[config] = {"n_seeds": len(recs), "rows": rows}
    return out


def table(summary: dict) -> str:
    """Markdown: one row per category and configuration, mean ± sd (percent); training minutes."""
    head = "| category | configuration | " + " | ".join(name for _, name in METRICS) + " | train min |"
    lines = [head, "|" + "---|" * (len(METRICS) + 3)]
    for cat in (*STUDY_CATEGORIES, "mean"):
        for config, s in summary.items():
            cells = [f"{s['rows'][cat][k][0]:.2f} ± {s['rows'][cat][k][1]:.2f}" for k, _ in METRICS]
            minutes = s["rows"]["train_minutes"]
            train = f"{minutes[0]:.1f} ± {minutes[1]:.1f}" if cat == "mean" else ""
            name = f"**{cat}**" if cat == "mean" else cat
            lines.append(f"| {name} | {config} | " + " | ".join(cells) + f" | {train} |")
    return "\n".join(lines)


def plot(summary: dict, path: Path) -> None:
    """Bars of image AUROC and AUPRO (mean ± sd) per category and configuration."""
    import cv2

    from utils.core.atomic import atomic_write_bytes

    w, h, left, top, bottom = 1200, 480, 60, 50, 70
    img = np.full((h, w, 3), 255, np.uint8)
    colours = {"per-category": (150, 110, 40), "multi-class": (40, 60, 200), "class-conditioned": (40, 160, 40)}
    groups = (*STUDY_CATEGORIES, "mean")
    pw = (w - left - 20) // 2
    for p, (key, title) in enumerate(METRICS[:2]):
        x0, x1, y0, y1 = left + p * pw, left + (p + 1) * pw - 40, top, h - bottom
        vals = [s["rows"][g][key][0] - s["rows"][g][key][1] for s in summary.values() for g in groups]
        lo = max(0.0, float(np.floor(min(vals) / 10) * 10))
        cv2.rectangle(img, (x0, y0), (x1, y1), (0, 0, 0), 1)
        for v in np.arange(lo, 100.1, 10 if 100 - lo <= 50 else 20):
            y = int(y1 - (v - lo) / (100 - lo) * (y1 - y0))
            cv2.line(img, (x0, y), (x1, y), (225, 225, 225), 1)
            cv2.putText(img, f"{v:.0f}", (x0 - 34, y + 5), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (0, 0, 0), 1, cv2.LINE_AA)
        cv2.putText(img, f"{title}, mean +- sd over seeds", (x0, y0 - 15), cv2.FONT_HERSHEY_SIMPLEX, 0.55,
                    (0, 0, 0), 1, cv2.LINE_AA)
        slot = (x1 - x0) / len(groups)
        bar = slot / (len(summary) + 1)
        for g, group in enumerate(groups):
            cv2.putText(img, group, (int(x0 + g * slot + bar / 2), y1 + 18), cv2.FONT_HERSHEY_SIMPLEX, 0.45,
                        (0, 0, 0), 1, cv2.LINE_AA)
            for c, (config, s) in enumerate(summary.items()):
                mean, sd = s["rows"][group][key]
                bx = int(x0 + g * slot + (c + 0.5) * bar)
                to_y = lambda v: int(y1 - (min(max(v, lo), 100) - lo) / (100 - lo) * (y1 - y0))  # noqa: E731
                cv2.rectangle(img, (bx, to_y(mean)), (int(bx + bar * 0.8), y1), colours[config], -1)
                mid = int(bx + bar * 0.4)
                cv2.line(img, (mid, to_y(mean - sd)), (mid, to_y(mean + sd)), (0, 0, 0), 1, cv2.LINE_AA)
    for c, config in enumerate(summary):
        cv2.rectangle(img, (left + 260 * c, h - 30), (left + 260 * c + 14, h - 16), colours[config], -1)
        cv2.putText(img, config, (left + 260 * c + 20, h - 18), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (0, 0, 0), 1,
                    cv2.LINE_AA)
    ok, buf = cv2.imencode(".png", img)
    atomic_write_bytes(path, buf.tobytes())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[3, 4, 5], help="-c train --seed of each repetition")
    p.add_argument("--epochs", type=int, default=None, help="default: the demo's (50)")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "out" / "multiclass_study"))
    args = p.parse_args()
    from data.demo_dataset import build_demo_dataset
    from utils.demo.recipe import DEMO_DATA, DEMO_SETTINGS
    from utils.machine.yardstick import matmul_gflops

    out = Path(args.out)
    epochs = args.epochs or DEMO_SETTINGS["epoch_num"]
    data = build_demo_dataset(out / "data", categories=STUDY_CATEGORIES, **DEMO_DATA)
    logs = out / f"runs_e{epochs}"
    mm_start = max(matmul_gflops(repeats=3))
    records = []
    for i, seed in enumerate(args.seeds):
        order = CONFIGS[i % 3:] + CONFIGS[:i % 3]
        for config in order:
            rec = run_config(config, seed, data, logs, epochs)
            records.append(rec)
            print(f"seed {seed} {config}: train {rec['train_seconds'] / 60:.1f} min, mean image AUROC "
                  f"{100 * np.mean([rec['metrics'][c]['image_auroc'] for c in STUDY_CATEGORIES]):.2f}", flush=True)
    mm_end = max(matmul_gflops(repeats=3))
    summary = summarise(records)
    (out / "study.json").write_text(json.dumps({"epochs": epochs, "seeds": args.seeds, "categories": STUDY_CATEGORIES,
                                                "matmul_gflops": [mm_start, mm_end], "records": records,
                                                "summary": summary}, indent=2))
    md = table(summary)
    (out / "study.md").write_text(md + f"\n\n{epochs} epochs, seeds {args.seeds}; 4096² float32 matmul {mm_start:.0f} "
                                       f"GFLOP/s at the start, {mm_end:.0f} at the end\n")
    plot(summary, out / "study.png")
    print(md)
    print(f"matmul {mm_start:.0f} -> {mm_end:.0f} GFLOP/s; files in {out}")


if __name__ == "__main__":
    main()
