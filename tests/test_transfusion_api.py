"""The Python API (issue 15): `transfusion.Detector` scores what -c test scores, from paths,
arrays or tensors, in every mode; decisions, maps at the input's size and the step options; the
README example runs as written; bad input is a one-line TransFusionError."""
from __future__ import annotations

import csv
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch
from PIL import Image

import transfusion  # the entry point other programs import
from tests.fixtures.helpers import REPO, TINY_FLAGS, TINY_SIZE, cli, tiny_tested_run
from tests.fixtures.layouts import make_folder
from utils.core.errors import TransFusionError

# every test here drives the command line, a subprocess or a trained run
pytestmark = pytest.mark.slow


def _per_image(results: Path) -> dict[str, float]:
    return {str(Path(r["image_path"]).resolve()): float(r["score"]) for r in csv.DictReader(
        (results / "per_image.csv").open())}


def _network_input(path: Path, size: int = TINY_SIZE) -> torch.Tensor:
    """docs/method.md §1 written out: PIL bilinear resize of the 8-bit RGB image, then (v/255 − 0.5)·2."""
    im = Image.open(path).convert("RGB").resize((size, size), Image.BILINEAR)
    return torch.from_numpy(((np.asarray(im, dtype=np.float32) / 255 - 0.5) * 2).transpose(2, 0, 1).copy())


@pytest.fixture(scope="module")
def rgb_run(tmp_path_factory):
    data, logs, _ = tiny_tested_run(tmp_path_factory.mktemp("run"), "a", size=48)
    files = sorted((data / "bottle" / "test").glob("*/*.png"))
    return logs / "a", files, _per_image(logs / "a" / "results" / "bottle")


def test_paths_arrays_and_tensors_give_the_scores_of_minus_c_test(rgb_run):
    run, files, tested = rgb_run
    det = transfusion.Detector.from_run(run, "bottle", device="cpu", batch_size=3)
    by_path = det(files)
    assert by_path.names == [str(p) for p in files] and by_path.maps.shape == (len(files), TINY_SIZE, TINY_SIZE)
    for name, score in zip(by_path.names, by_path.scores):  # -c test: TestDataset + the evaluation loop
        assert score == pytest.approx(tested[str(Path(name).resolve())], abs=1e-6)
    arrays = [np.asarray(Image.open(p).convert("RGB")) for p in files]
    by_array = det(arrays)
    assert by_array.names == [f"array[{i}]" for i in range(len(files))]
    np.testing.assert_allclose(by_array.scores, by_path.scores, atol=1e-6, rtol=0)
    by_tensor = det(torch.stack([_network_input(p) for p in files]))
    np.testing.assert_allclose(by_tensor.scores, by_path.scores, atol=1e-6, rtol=0)
    assert by_path.input_sizes == [(48, 48)] * len(files) and by_tensor.input_sizes == [(32, 32)] * len(files)
    one = det(str(files[0]))  # a single path is a batch of one
    assert len(one) == 1 and one.scores[0] == pytest.approx(by_path.scores[0], abs=1e-6)


def test_decisions_use_the_stored_threshold_or_one_given(rgb_run):
    run, files, _ = rgb_run
    import json

    meta = json.loads((run / "models" / "bottle_meta.json").read_text())
    det = transfusion.Detector.from_run(run, "bottle", device="cpu")
    res = det(files)
    assert res.threshold is not None and res.threshold.kind == "F1-max" and res.threshold.value == meta["f1_threshold"]
    assert "bottle_meta.json" in res.threshold.source
    assert res.decisions == ["defect" if s >= meta["f1_threshold"] else "OK" for s in res.scores]
    middle = float(np.median(res.scores))
    own = transfusion.Detector.from_run(run, "bottle", device="cpu", threshold=middle)(files)
    assert own.threshold.kind == "given" and own.decisions == ["defect" if s >= middle else "OK" for s in own.scores]
    assert [r["decision"] for r in own.records()] == own.decisions


def test_maps_resized_to_each_input_bilinearly(rgb_run, tmp_path):
    run, files, _ = rgb_run
    det = transfusion.Detector.from_run(run, "bottle", device="cpu")
    base = np.asarray(Image.open(files[0]).convert("RGB"))
    square = np.asarray(Image.fromarray(base).resize((64, 64)))       # twice the model's 32 px
    wide = np.asarray(Image.fromarray(base).resize((56, 40)))         # H 40, W 56
    res = det([square, wide], input_size_maps=True)
    assert [m.shape for m in res.input_size_maps] == [(64, 64), (40, 56)] and res.input_sizes == [(64, 64), (40, 56)]
    m, up = res.maps[0], res.input_size_maps[0]
    # bilinear, half-pixel centres: an exact 2x upscale puts output pixel 2i+1 at input 0.75·i + 0.25·(i+1)
    expected = 0.75 * 0.75 * m[0, 0] + 0.75 * 0.25 * (m[0, 1] + m[1, 0]) + 0.25 * 0.25 * m[1, 1]
    assert up[1, 1] == pytest.approx(expected, abs=1e-12) and up[0, 0] == pytest.approx(m[0, 0], abs=1e-12)
    assert up.max() <= m.max() + 1e-12


def test_step_options_are_keywords_and_the_steps_used_are_reported(rgb_run):
    run, files, _ = rgb_run
    default = transfusion.Detector.from_run(run, "bottle", device="cpu")
    assert default(files).steps.tolist() == [3] * len(files)  # T = 5: t = 3, 2, 1
    strided = transfusion.Detector.from_run(run, "bottle", device="cpu", eval_steps=2)
    assert strided(files).steps.tolist() == [2] * len(files)
    assert strided.threshold_note is not None and "step schedule" in strided.threshold_note  # F1 made with all 3
    assert default.threshold_note is None
    stopped = transfusion.Detector.from_run(run, "bottle", device="cpu", early_stop=1)(files)
    assert all(1 <= s <= 3 for s in stopped.steps)


def test_the_onnxruntime_backend_runs_the_same_loop(rgb_run):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    run, files, _ = rgb_run
    transfusion.export_onnx(run, "bottle")
    for kwargs in ({}, {"eval_steps": 2, "early_stop": 1}):  # early stop: batches shrink inside the loop
        a = transfusion.Detector.from_run(run, "bottle", device="cpu", **kwargs)(files)
        b = transfusion.Detector.from_run(run, "bottle", backend="onnxruntime", **kwargs)(files)
        np.testing.assert_allclose(b.scores, a.scores, atol=1e-4, rtol=0)
        np.testing.assert_allclose(b.maps, a.maps, atol=1e-4, rtol=0)
        assert b.steps.tolist() == a.steps.tolist()
    with pytest.raises(TransFusionError, match="amp='bf16' means nothing with backend='onnxruntime'"):
        transfusion.Detector.from_run(run, "bottle", backend="onnxruntime", amp="bf16")


@pytest.mark.parametrize("mode,width", [("rgbd", "16"), ("d", "32")])
def test_depth_modes_take_pairs_of_paths_or_arrays(tmp_path, mode, width):
    data, logs, _ = tiny_tested_run(tmp_path, "m", size=40, mode=mode, width=width)
    tested = _per_image(logs / "m" / "results" / "tire")
    det = transfusion.Detector.from_run(logs / "m", "tire", device="cpu")
    rgbs = sorted((data / "tire" / "test").glob("*/rgb/*.png"))
    xyzs = [p.parent.parent / "xyz" / (p.stem + ".tiff") for p in rgbs]
    by_layout = det(rgbs, input_size_maps=True)  # rgb paths, xyz found beside them (MVTec 3D-AD)
    for name, score in zip(by_layout.names, by_layout.scores):
        assert score == pytest.approx(tested[str(Path(name).resolve())], abs=1e-6)
    assert [m.shape for m in by_layout.input_size_maps] == [(40, 40)] * len(rgbs)
    by_paths = det(list(zip(rgbs, xyzs)))
    arrays = [(np.asarray(Image.open(r).convert("RGB")) if mode == "rgbd" else None, tifffile.imread(x))
              for r, x in zip(rgbs, xyzs)]
    by_arrays = det(arrays)
    single = det(arrays[0])  # one pair
    for other in (by_paths, by_arrays):
        np.testing.assert_allclose(other.scores, by_layout.scores, atol=1e-6, rtol=0)
    assert single.scores[0] == pytest.approx(by_layout.scores[0], abs=1e-6)
    with pytest.raises(TransFusionError, match="pair"):
        det([np.asarray(Image.open(rgbs[0]).convert("RGB"))])


def test_bad_input_is_a_one_line_error(rgb_run, tmp_path):
    run, files, _ = rgb_run
    det = transfusion.Detector.from_run(run, "bottle", device="cpu")
    rgb = np.asarray(Image.open(files[0]).convert("RGB"))
    cases = [
        (lambda: det([rgb.astype(np.float32)]), "expected RGB uint8 HxWx3"),
        (lambda: det([rgb[..., 0]]), "expected RGB uint8 HxWx3"),
        (lambda: det(torch.zeros(2, 3, 64, 64)), "takes float [3, 32, 32]"),
        (lambda: det(torch.full((1, 3, 32, 32), 200.0)), "takes [-1, 1]"),
        (lambda: det([tmp_path / "missing.png"]), "missing.png"),
        (lambda: det(42), "cannot score a int"),
        (lambda: transfusion.Detector.from_run(run, "cable"), "holds bottle"),
        (lambda: transfusion.Detector.from_run(tmp_path, "bottle"), "no checkpoints"),
        (lambda: transfusion.Detector.from_run(run, "bottle", backend="tensorrt"), "backend must be one of"),
        (lambda: transfusion.Detector.from_run(run, "bottle", eval_steps=9), "--eval-steps 9"),
        (lambda: transfusion.Detector.from_run(run, "bottle", early_stop=0), "early_stop must be"),
        (lambda: transfusion.Detector.from_run(run, "bottle", weight=2), "weight"),
    ]
    for call, needle in cases:
        with pytest.raises(TransFusionError) as info:
            call()
        assert needle in str(info.value) and "\n" not in str(info.value), str(info.value)


def test_transfusion_refuses_a_program_package_that_hides_its_own(tmp_path):
    (tmp_path / "utils").mkdir()
    (tmp_path / "utils" / "__init__.py").write_text("")
    code = "import utils, transfusion"
    env = {**os.environ, "PYTHONPATH": f"{tmp_path}{os.pathsep}{REPO}"}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, env=env,
                          timeout=120)
    assert proc.returncode != 0
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("ImportError: transfusion: the name 'utils' is taken by") and str(tmp_path) in last


def _readme_example() -> str:
    text = (REPO / "README.md").read_text()
    section = text.split("\n## Use a trained model from Python\n", 1)[1].split("\n## ", 1)[0]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_the_readme_example_runs_as_written(tmp_path):
    """The README's Python example, from another directory than the project's (as after pip install -e .),
    on a run folder and images where it expects them."""
    pytest.importorskip("onnxruntime")
    data = make_folder(tmp_path / "data", name="my_parts", n_train=4, with_test=True, n_test_good=1, size=48)
    common = ["-r", "my_parts", "-ds", "folder", "--category", "my_parts", "--log-path", str(tmp_path / "experiments"),
              *TINY_FLAGS]
    cli("-c", "train", "-d", str(data), "--epoch-num", "1", *common)
    cli("-c", "test", "-d", str(data), *common)
    (tmp_path / "new_parts").mkdir()
    for i, src in enumerate(sorted((data / "test").glob("*/*.png"))[:2], start=1):
        shutil.copy(src, tmp_path / "new_parts" / f"{i:03d}.png")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, "-c", _readme_example()], capture_output=True, text=True, cwd=tmp_path,
                          env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout.splitlines()
    assert out[0].startswith("F1-max threshold")
    assert re.fullmatch(r"\d\.\d{6}  (defect|OK)  new_parts/001\.png", out[1]) and out[2].endswith("array[1]")
    assert out[3] == "map (48, 48) steps [3, 3]"
    assert out[4].startswith("largest score difference") and float(out[4].split()[-1]) < 1e-4
