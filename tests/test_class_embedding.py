"""Class-conditioned TransFusion (--class-embedding, this project's addition: docs/method.md §10):
one learned row per category added to the step embedding of a multi-class network."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from models.checkpoint import load_network_file, with_class_embedding
from models.conditioning import ClassConditionedUNet
from models.unet import TransFusionUNet, UNetConfig
from tests.fixtures.helpers import REPO, TINY_FLAGS, TINY_NET, cli
from tests.fixtures.layouts import make_mvtec
from utils.core.errors import TransFusionError

CATEGORIES = ("bottle", "carpet")


def test_rows_of_zeros_leave_the_network_exactly_as_it_was():
    """The conditioning adds to the step embedding; zero rows (the initialisation) add nothing, so
    a conditioned network starts as the unconditioned one, bit for bit."""
    torch.manual_seed(0)
    unet = TransFusionUNet(UNetConfig(**TINY_NET)).eval()
    conditioned = ClassConditionedUNet(unet, CATEGORIES).eval()
    x, t = torch.rand(2, 4, 32, 32) * 2 - 1, torch.tensor([1, 3])
    with torch.no_grad():
        plain = unet(x, t)
        zero = conditioned(x, t, torch.tensor([0, 1]))
        conditioned.class_embedding.weight.normal_()
        moved = conditioned(x, t, torch.tensor([0, 1]))
    assert all(torch.equal(a, b) for a, b in zip(plain, zero))
    assert not torch.equal(plain[2], moved[2])  # a non-zero row changes what the network sees


@pytest.fixture(scope="module")
def conditioned_run(tmp_path_factory) -> tuple[Path, Path, list[str]]:
    root = tmp_path_factory.mktemp("ce")
    data = root / "data"
    for cat in CATEGORIES:
        make_mvtec(data, cat, n_train=4, n_test_good=2, defects=("crack",), n_per_defect=2, size=48)
    logs = root / "logs"
    common = ["-r", "ce", "--log-path", str(logs), *TINY_FLAGS]
    cli("-c", "train_multiclass", "-d", str(data), "--epoch-num", "2", "--class-embedding", *common)
    return data, logs, common


@pytest.mark.slow
def test_the_categories_travel_beside_weights_that_the_importer_still_loads(conditioned_run):
    _, logs, _ = conditioned_run
    models = logs / "ce" / "models"
    plain = load_network_file(models / "*_model.pkl")  # the released-checkpoint importer: the paper's network
    sd = torch.load(models / "*_model.pkl", weights_only=True)
    TransFusionUNet(plain.cfg).load_state_dict({k.removeprefix("model."): v for k, v in sd.items()}, strict=True)
    assert not any("class" in k for k in sd)
    side = torch.load(models / "multiclass_class_embedding.pt", weights_only=True)
    assert side["categories"] == list(CATEGORIES) and side["weight"].shape == (2, 4 * TINY_NET["n_channels"])
    assert side["weight"].abs().sum() > 0  # trained away from the zero rows
    meta = json.loads((models / "multiclass_meta.json").read_text())
    assert meta["class_embedding"] == {"file": "multiclass_class_embedding.pt", "categories": list(CATEGORIES)}


@pytest.mark.slow
def test_test_multiclass_passes_each_test_sets_category(conditioned_run):
    data, logs, common = conditioned_run
    cli("-c", "test_multiclass", "-d", str(data), *common)
    import transfusion

    for cat in CATEGORIES:
        files = sorted(str(p) for p in (data / cat / "test").glob("*/*.png"))
        det = transfusion.Detector.from_run(logs / "ce", cat, device="cpu")
        got = det(files)
        rows = (logs / "ce" / "results" / "multiclass" / cat / "per_image.csv").read_text().splitlines()[1:]
        tested = {r.split(",")[0]: float(r.split(",")[3]) for r in rows}
        assert [tested[n] for n in got.names] == pytest.approx(list(got.scores), abs=1e-7)
    # the rows differ, so the two categories' detectors score the same image differently
    one = str(next((data / "bottle" / "test" / "good").iterdir()))
    a = transfusion.Detector.from_run(logs / "ce", "bottle", device="cpu")(one).scores[0]
    b = transfusion.Detector.from_run(logs / "ce", "carpet", device="cpu")(one).scores[0]
    assert a != b


@pytest.mark.slow
@pytest.mark.parametrize("command", ["predict", "calibrate", "export"])
def test_commands_that_score_refuse_without_a_category(conditioned_run, command):
    data, logs, common = conditioned_run
    extra = {"predict": ["--input", str(data / "bottle" / "test" / "good")],
             "calibrate": ["--target-fpr", "0.5", "--calib-path", str(data / "bottle" / "test" / "good")],
             "export": []}[command]
    r = cli("-c", command, *extra, *common, check=False)
    err = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(err) == 1 and "class-conditioned" in err[0] and "bottle, carpet" in err[0]


@pytest.mark.slow
def test_export_takes_the_category_as_an_input_and_onnx_runtime_agrees(conditioned_run):
    pytest.importorskip("onnxruntime")
    data, logs, common = conditioned_run
    cli("-c", "export", "--category", "carpet", *common)
    side = json.loads((logs / "ce" / "models" / "multiclass_onnx.json").read_text())
    assert side["class_conditioned"] and side["categories"] == list(CATEGORIES) and "class" in side["inputs"]
    import transfusion

    files = sorted(str(p) for p in (data / "bottle" / "test").glob("*/*.png"))
    for cat in CATEGORIES:  # one graph, any category
        torch_det = transfusion.Detector.from_run(logs / "ce", cat, device="cpu")
        onnx_det = transfusion.Detector.from_run(logs / "ce", cat, backend="onnxruntime")
        assert onnx_det(files).scores == pytest.approx(torch_det(files).scores, abs=1e-4)


@pytest.mark.slow
def test_the_weights_load_in_a_fresh_process(conditioned_run):
    data, logs, _ = conditioned_run
    one = str(next((data / "carpet" / "test" / "good").iterdir()))
    code = (f"import transfusion; d = transfusion.Detector.from_run({str(logs / 'ce')!r}, 'carpet', device='cpu'); "
            f"print(repr(float(d({one!r}).scores[0])))")
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    import transfusion

    here = float(transfusion.Detector.from_run(logs / "ce", "carpet", device="cpu")(one).scores[0])
    assert float(proc.stdout.strip()) == here


def test_a_damaged_class_embedding_file_is_one_line(tmp_path):
    net = TransFusionUNet(UNetConfig(**TINY_NET))
    for content in (b"not a torch file", None):
        path = tmp_path / "multiclass_class_embedding.pt"
        if content is None:
            torch.save({"format": "transfusion-class-embedding", "categories": ["a"], "weight": torch.zeros(3, 3)}, path)
        else:
            path.write_bytes(content)
        with pytest.raises(TransFusionError) as exc:
            with_class_embedding(net, path)
        assert str(path) in str(exc.value) and "\n" not in str(exc.value)


def test_class_embedding_goes_with_train_multiclass_only(tmp_path):
    r = cli("-c", "train", "-r", "x", "-d", str(tmp_path), "--class-embedding", check=False)
    assert r.returncode == 2 and "--class-embedding goes with -c train_multiclass" in r.stderr
