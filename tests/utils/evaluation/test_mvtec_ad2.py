"""MVTec AD 2 end to end through the command line (docs/method.md §11): -c train, -c test with the
dataset's protocol at native resolution, and -c submit at the official private counts, its files
read back one by one as the server's checker would."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image

import transfusion
from data.catalog import MVTEC_AD2_PRIVATE_COUNTS
from data.discovery import find_test_samples, find_validation_images
from data.io import read_mask_native
from tests.fixtures.helpers import TINY_FLAGS, cli
from tests.fixtures.layouts import make_mvtec_ad2
from utils.core.errors import TransFusionError
from utils.evaluation.submit import check_submission

pytestmark = pytest.mark.slow
# height, width per scenario: none square, all different, some odd
SIZES = {cat: (27 + i, 41 - 2 * i) for i, cat in enumerate(MVTEC_AD2_PRIVATE_COUNTS)}


@pytest.fixture(scope="module")
def submitted(tmp_path_factory):
    """All eight scenarios at the official private counts (tiny images), one rice scenario in grey,
    trained for one epoch each, tested, and submitted."""
    root = tmp_path_factory.mktemp("ad2")
    data = make_mvtec_ad2(root / "data", categories=tuple(MVTEC_AD2_PRIVATE_COUNTS), n_private=MVTEC_AD2_PRIVATE_COUNTS,
                          size=SIZES, grey=("rice",))
    common = ["-r", "r", "-d", str(data), "-ds", "mvtec_ad2", "--log-path", str(root / "logs"), *TINY_FLAGS]
    cli("-c", "train", "--epoch-num", "1", *common)
    test = cli("-c", "test", "--category", "can", "--eval-steps", "1", *common)
    submit = cli("-c", "submit", "--eval-steps", "1", *common)
    return data, root / "logs" / "r", common, test, submit


def _files(folder: Path) -> dict[Path, bytes]:
    return {p.relative_to(folder): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_the_submission_holds_exactly_what_the_server_takes(submitted):
    data, run, _, _, submit = submitted
    out = run / "submission"
    assert sorted(p.name for p in out.iterdir()) == ["anomaly_images", "anomaly_images_thresholded"]
    files = {p.relative_to(out) for p in out.rglob("*") if p.is_file()}
    assert len(files) == 2 * 2 * sum(MVTEC_AD2_PRIVATE_COUNTS.values())
    for category, count in MVTEC_AD2_PRIVATE_COUNTS.items():
        for split, suffix in (("test_private", "regular"), ("test_private_mixed", "mixed")):
            names = [f"{i:03d}_{suffix}" for i in range(count)]
            maps = sorted((out / "anomaly_images" / category / split).iterdir())
            segs = sorted((out / "anomaly_images_thresholded" / category / split).iterdir())
            assert [p.name for p in maps] == [f"{n}.tiff" for n in names]
            assert [p.name for p in segs] == [f"{n}.png" for n in names]
    for path in sorted(out.rglob("*.tiff"))[::97]:  # a spread of them, every scenario
        arr = tifffile.imread(path)
        assert arr.dtype == np.float16 and arr.shape == SIZES[path.parts[-3]] and np.isfinite(arr).all()
    for path in sorted(out.rglob("*.png"))[::97]:
        with Image.open(path) as im:
            assert im.mode == "L" and im.size == SIZES[path.parts[-3]][::-1]
            assert set(np.unique(np.asarray(im))) <= {0, 255}
    assert "submission checked" in submit.stdout and "warning" not in submit.stdout  # official counts: no warning


def test_the_validation_threshold_is_mean_plus_three_std_of_every_validation_pixel(submitted):
    data, run, _, _, _ = submitted
    record = json.loads((run / "submission_progress" / "can.json").read_text())
    det = transfusion.Detector.from_run(run, "can", eval_steps=1)
    images = find_validation_images("mvtec_ad2", data, "can")
    pixels = np.concatenate([m.ravel() for m in det(images, input_size_maps=True).input_size_maps])
    assert pixels.size == len(images) * SIZES["can"][0] * SIZES["can"][1]  # at the images' own size
    assert record["threshold"] == pytest.approx(pixels.mean() + 3 * pixels.std(), rel=1e-9)
    # and the segmentation is the float map cut there
    private = sorted((data / "can" / "test_private").iterdir())[:3]
    maps = det(private, input_size_maps=True).input_size_maps
    for image, native in zip(private, maps):
        seg = np.asarray(Image.open(run / "submission" / "anomaly_images_thresholded" / "can" / "test_private"
                                    / f"{image.stem}.png"))
        assert np.array_equal(seg == 255, native >= record["threshold"])
        stored = tifffile.imread(run / "submission" / "anomaly_images" / "can" / "test_private" / f"{image.stem}.tiff")
        assert np.allclose(stored, native.astype(np.float16), atol=0)


def test_c_test_reports_the_protocol_at_native_resolution(submitted):
    data, run, _, test, _ = submitted
    figures = json.loads((run / "results" / "can" / "summary.json").read_text())["mvtec_ad2"]
    assert figures["exact"] is True and "(exact" in test.stdout and "AU-PRO@0.05" in test.stdout
    h, w = SIZES["can"]
    assert figures["n_pixels"] == len(find_test_samples("mvtec_ad2", data, "can")) * h * w
    # SegF1 by hand: the native maps cut at the validation threshold, TP/FP/FN pooled over every pixel
    threshold = figures["thresholds"]["validation mean+3std"]
    samples = find_test_samples("mvtec_ad2", data, "can")
    det = transfusion.Detector.from_run(run, "can", eval_steps=1)
    maps = det([s.image_path for s in samples], input_size_maps=True).input_size_maps
    tp = fp = fn = 0
    for s, native in zip(samples, maps):
        gt = read_mask_native(s.mask_path) if s.mask_path else np.zeros((h, w), bool)
        pred = native >= threshold
        tp, fp, fn = tp + int((pred & gt).sum()), fp + int((pred & ~gt).sum()), fn + int((~pred & gt).sum())
    expected = 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else None
    assert figures["seg_f1"]["validation mean+3std"] == pytest.approx(expected, abs=1e-12)
    assert 0.0 <= figures["aupro_005"] <= 1.0 and 0.0 <= figures["aupro"] <= 1.0


def test_a_stopped_submit_continues_to_the_same_files(submitted, tmp_path):
    data, run, common, _, _ = submitted
    out = run / "submission"
    before = _files(out)
    victims = sorted(out.rglob("*.tiff"))[5:40] + sorted(out.rglob("*.png"))[100:130]
    for p in victims:
        p.unlink()  # what a kill leaves: some images without their files, and a temporary file
    (victims[0].parent / f".{victims[0].name}.abc.tmp").write_bytes(b"half")
    again = cli("-c", "submit", "--eval-steps", "1", *common)
    assert "submission checked" in again.stdout
    assert _files(out) == before  # the same bytes, nothing twice, the temporary file gone


def test_a_missing_map_or_a_foreign_file_is_refused_in_one_line(submitted, tmp_path):
    data, run, _, _, _ = submitted
    out = run / "submission"
    victim = out / "anomaly_images" / "vial" / "test_private_mixed" / "007_mixed.tiff"
    saved = victim.read_bytes()
    victim.unlink()
    try:
        with pytest.raises(TransFusionError, match=r"1 file\(s\) missing, e.g. anomaly_images/vial/test_private_mix"):
            check_submission(out, str(data), list(MVTEC_AD2_PRIVATE_COUNTS))
    finally:
        victim.write_bytes(saved)
    extra = out / "anomaly_images" / "notes.txt"
    extra.write_text("x")
    try:
        with pytest.raises(TransFusionError, match="notes.txt"):
            check_submission(out, str(data), list(MVTEC_AD2_PRIVATE_COUNTS))
    finally:
        extra.unlink()


def test_a_scenario_not_trained_is_named(submitted, tmp_path):
    data, run, common, _, _ = submitted
    logs = tmp_path / "logs"
    (logs / "half" / "models").mkdir(parents=True)
    for f in (run / "models").glob("can_*"):
        (logs / "half" / "models" / f.name).write_bytes(f.read_bytes())
    argv = common[2:]  # without "-r r"
    argv[argv.index("--log-path") + 1] = str(logs)
    r = cli("-c", "submit", "-r", "half", *argv, check=False)
    assert r.returncode == 2 and "fabric: no trained network" in r.stderr and len(r.stderr.strip().splitlines()) == 1


def test_a_given_threshold_and_another_folder(submitted, tmp_path):
    data, run, common, _, _ = submitted
    out = tmp_path / "sub"
    cli("-c", "submit", "--eval-steps", "1", "--category", "can", "--threshold", "0.5", "--out", str(out), *common)
    image = sorted((data / "can" / "test_private_mixed").iterdir())[2]
    native = transfusion.Detector.from_run(run, "can", eval_steps=1)([image], input_size_maps=True).input_size_maps[0]
    seg_path = out / "anomaly_images_thresholded" / "can" / "test_private_mixed" / f"{image.stem}.png"
    seg = np.asarray(Image.open(seg_path))
    assert np.array_equal(seg == 255, native >= 0.5)
    refused = cli("-c", "predict", "--input", str(image), "--threshold", "calibrated", *common, check=False)
    assert refused.returncode == 2 and "goes with -c submit" in refused.stderr
