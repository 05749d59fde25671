"""models/checkpoint.py: safe loading, architecture inference and one-line errors."""
from __future__ import annotations

import ast
import os
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from models.checkpoint import config_from_state_dict, load_state_dict_file, normalize_state_dict, validate_against_model
from models.unet import TransFusionUNet, UNetConfig
from tests.fixtures.checkpoints import count_parameters, reference_shapes, synthetic_state_dict
from tests.fixtures.helpers import REFERENCE
from utils.core.atomic import atomic_torch_save
from utils.core.errors import TransFusionError
from utils.run.settings import check_arch_matches

DEFAULT_MULTS = (1, 2, 2, 2)
DEFAULT_ATTN = (False, False, True, True)
# parameters + buffers, from reference/official_model_summary.md
SUMMARY_VALUES = {"rgb": 54_559_561, "d": 54_556_101, "rgbd": 112_032_011}
SUMMARY_KEYS = {"rgb": 326, "d": 326, "rgbd": 376}


def read_tsv(mode: str) -> list[tuple[str, tuple[int, ...], str]]:
    path = REFERENCE / f"official_state_dict_{mode}.tsv"
    rows = []
    for line in path.read_text().splitlines()[1:]:
        key, shape, dtype, _ = line.split("\t")
        rows.append((key, tuple(ast.literal_eval(shape)), dtype))
    return rows


def meta_state_dict(mode: str) -> dict[str, torch.Tensor]:
    """The released state dict's keys and shapes without allocating its weights."""
    return {k: torch.empty(s, device="meta", dtype=getattr(torch, d)) for k, s, d in read_tsv(mode)}


def arch(mode: str, n: int, mults: tuple[int, ...], attn: tuple[bool, ...], n_blocks: int,
         groups: tuple[bool, ...] | None = None) -> UNetConfig:
    return UNetConfig(mode=mode, n_channels=n, ch_mults=mults, attn=attn, n_blocks=n_blocks,
                      group_conv=groups if groups is not None else (True,) * len(mults))


def small_spec(mode: str = "rgb") -> UNetConfig:
    return arch(mode, 32 if mode != "rgbd" else 64, (1, 2), (False, True), 1)


def save(obj: object, path: Path) -> Path:
    atomic_torch_save(obj, path)
    return path


def assert_one_line_error(exc: pytest.ExceptionInfo, path: Path) -> str:
    msg = str(exc.value)
    assert str(path) in msg
    assert "\n" not in msg
    assert "Traceback" not in msg
    return msg


# ----------------------------------------------------------------- architecture

@pytest.mark.parametrize("mode, n_channels", [("rgb", 64), ("d", 64), ("rgbd", 128)])
def test_infer_arch_on_released_layouts(mode: str, n_channels: int) -> None:
    spec = config_from_state_dict(meta_state_dict(mode))
    assert spec.mode == mode
    assert spec.n_channels == n_channels
    assert spec.ch_mults == DEFAULT_MULTS
    assert spec.attn == DEFAULT_ATTN
    assert spec.n_blocks == 2
    assert spec.group_conv == (True, True, True, True)
    assert spec.image_channels == {"rgb": 3, "d": 1, "rgbd": 4}[mode]
    assert spec.level_widths == tuple(n_channels * m for m in (1, 2, 4, 8))


@pytest.mark.parametrize("mode", ["rgb", "d", "rgbd"])
def test_reference_shapes_reproduce_the_tsv_exactly(mode: str) -> None:
    rows = read_tsv(mode)
    spec = config_from_state_dict(meta_state_dict(mode))
    shapes = reference_shapes(spec)
    assert list(shapes.items()) == [(k, s) for k, s, _ in rows]  # same keys, order and shapes
    assert len(shapes) == SUMMARY_KEYS[mode]
    assert count_parameters(shapes) == SUMMARY_VALUES[mode]


@settings(max_examples=60, deadline=None)
@given(mode=st.sampled_from(["rgb", "d", "rgbd"]),
       n=st.sampled_from([32, 64, 128]),
       mults=st.lists(st.integers(1, 3), min_size=1, max_size=4),
       data=st.data(),
       n_blocks=st.integers(1, 3))
def test_infer_arch_inverts_reference_shapes(mode: str, n: int, mults: list[int],
                                             data: st.DataObject, n_blocks: int) -> None:
    levels = len(mults)
    attn = tuple(data.draw(st.lists(st.booleans(), min_size=levels, max_size=levels)))
    groups = (tuple(data.draw(st.lists(st.booleans(), min_size=levels, max_size=levels)))
              if mode == "rgbd" else (True,) * levels)
    spec = arch(mode, n, tuple(mults), attn, n_blocks, groups)
    assert config_from_state_dict(synthetic_state_dict(spec)) == spec


def test_reference_shapes_match_the_project_unet() -> None:
    for spec in (small_spec("rgb"), small_spec("d"), small_spec("rgbd"),
                 arch("rgbd", 128, DEFAULT_MULTS, DEFAULT_ATTN, 2)):
        with torch.device("meta"):
            net = TransFusionUNet(spec)
        got = {k: tuple(v.shape) for k, v in net.state_dict().items()}
        assert got == {k[len("model."):]: s for k, s in reference_shapes(spec).items()}
        validate_against_model(synthetic_state_dict(spec), net, "x.pkl")


@pytest.mark.parametrize("mutate, fragment", [
    (lambda sd: sd.pop("model.time_emb.linear_1.weight"), "time_emb.linear_1.weight is missing"),
    (lambda sd: sd.__setitem__("model.image_proj.weight", torch.empty(8, 4, 3, 3)), "4 input channels"),
    (lambda sd: [sd.pop(k) for k in list(sd) if k.startswith("model.down.")], "model.down"),
    (lambda sd: sd.pop("model.down.0.res.conv1.weight"), "down.0.res.conv1.weight is missing"),
    (lambda sd: sd.__setitem__("model.down.0.res.conv1.weight", torch.empty(32)), "shape"),
    (lambda sd: sd.__setitem__("model.down.3.res.conv1.weight", torch.empty(48, 32, 3, 3)),
     "different widths"),
])
def test_infer_arch_rejects_inconsistent_structures(mutate, fragment: str) -> None:
    sd = synthetic_state_dict(arch("rgb", 32, (1, 2), (False, True), 2))
    mutate(sd)
    with pytest.raises(TransFusionError, match=None) as exc:
        config_from_state_dict(sd, path="ckpt.pkl")
    assert fragment in str(exc.value) and "ckpt.pkl" in str(exc.value)


# ---------------------------------------------------------------------- loading

def test_small_real_state_dict_round_trips(tmp_path: Path) -> None:
    spec = small_spec("rgbd")
    sd = synthetic_state_dict(spec, device="cpu", seed=0)
    loaded = load_state_dict_file(save(sd, tmp_path / "bagel_model.pkl"))
    assert list(loaded) == list(sd)
    assert all(torch.equal(loaded[k], sd[k]) and loaded[k].device.type == "cpu" for k in sd)
    assert loaded["model.final_seg.norm.num_batches_tracked"].dtype == torch.int64
    assert config_from_state_dict(loaded) == spec


def test_legacy_serialization_format_loads(tmp_path: Path) -> None:
    sd = synthetic_state_dict(small_spec(), device="cpu", seed=1)
    path = tmp_path / "old.pkl"
    torch.save(sd, path, _use_new_zipfile_serialization=False)
    assert torch.equal(load_state_dict_file(path)["model.final.weight"], sd["model.final.weight"])


@pytest.mark.parametrize("wrap", [
    lambda sd: {"state_dict": sd},
    lambda sd: {"model": sd, "optimizer": {"lr": torch.tensor(1e-5)}},
    lambda sd: {"state_dict": {"model": sd}},
    lambda sd: {f"module.{k}": v for k, v in sd.items()},
    lambda sd: {"state_dict": {f"module.{k}": v for k, v in sd.items()}},
    lambda sd: {k[len("model."):]: v for k, v in sd.items()},  # the bare UNet's keys
    lambda sd: {f"module.{k[len('model.'):]}": v for k, v in sd.items()},
])
def test_wrappers_and_prefixes_are_normalised(tmp_path: Path, wrap) -> None:
    sd = synthetic_state_dict(small_spec(), device="cpu", seed=2)
    loaded = load_state_dict_file(save(wrap(sd), tmp_path / "w.pkl"))
    assert list(loaded) == list(sd)
    assert all(torch.equal(loaded[k], sd[k]) for k in sd)


def test_missing_file_names_it_and_says_how_to_get_one(tmp_path: Path) -> None:
    path = tmp_path / "experiments" / "transfusion_mvtec" / "models" / "bottle_model.pkl"
    with pytest.raises(TransFusionError) as exc:
        load_state_dict_file(path)
    msg = assert_one_line_error(exc, path)
    assert "scripts/download_weights.py" in msg and "train one" in msg


def test_directory_is_refused(tmp_path: Path) -> None:
    with pytest.raises(TransFusionError) as exc:
        load_state_dict_file(tmp_path)
    assert_one_line_error(exc, tmp_path)


@pytest.mark.parametrize("keep", [0.5, 0.9, 0.999])
def test_truncated_file(tmp_path: Path, keep: float) -> None:
    good = save(synthetic_state_dict(small_spec(), device="cpu", seed=3), tmp_path / "good.pkl")
    data = good.read_bytes()
    bad = tmp_path / "bottle_model.pkl"
    bad.write_bytes(data[: int(len(data) * keep)])
    with pytest.raises(TransFusionError) as exc:
        load_state_dict_file(bad)
    assert "scripts/download_weights.py" in assert_one_line_error(exc, bad)


@pytest.mark.parametrize("payload", [b"", os.urandom(4096), b"<!DOCTYPE html><html>quota</html>",
                                     b"PK\x03\x04" + os.urandom(200)])
def test_garbage_files(tmp_path: Path, payload: bytes) -> None:
    bad = tmp_path / "cable_model.pkl"
    bad.write_bytes(payload)
    with pytest.raises(TransFusionError) as exc:
        load_state_dict_file(bad)
    msg = assert_one_line_error(exc, bad)
    assert "corrupt" in msg and "refused" not in msg


class Opaque:
    """An arbitrary Python object: the safe loader must not rebuild it."""

    def __init__(self) -> None:
        self.value = 3


def test_pickled_custom_object_is_refused(tmp_path: Path) -> None:
    sd = synthetic_state_dict(small_spec(), device="cpu", seed=4)
    path = save({**sd, "extra": Opaque()}, tmp_path / "pill_model.pkl")
    with pytest.raises(TransFusionError) as exc:
        load_state_dict_file(path)
    msg = assert_one_line_error(exc, path)
    assert "refused" in msg and "Weights only" not in msg


@pytest.mark.parametrize("obj, fragment", [
    ({}, "empty dict"),
    ({"fc.weight": torch.zeros(2, 2), "fc.bias": torch.zeros(2)}, "not a TransFusion checkpoint"),
    ({"model.image_proj.weight": torch.zeros(1), "decoder.weight": torch.zeros(1)}, "'decoder.weight'"),
    ({"model.time_emb.linear_1.weight": torch.zeros(4, 4)}, "not a TransFusion checkpoint"),
    (torch.zeros(3), "Tensor"),
    ([torch.zeros(3)], "list"),
    ({"model.image_proj.weight": 3}, "int, not a tensor"),
    ({1: torch.zeros(1)}, "not a tensor"),
])
def test_non_transfusion_content(tmp_path: Path, obj: object, fragment: str) -> None:
    path = save(obj, tmp_path / "tile_model.pkl")
    with pytest.raises(TransFusionError) as exc:
        load_state_dict_file(path)
    msg = assert_one_line_error(exc, path)
    assert fragment in msg
    if fragment == "not a TransFusion checkpoint":
        assert "expected keys like model.image_proj.weight" in msg


def test_normalize_without_a_path_still_explains() -> None:
    with pytest.raises(TransFusionError, match="expected keys like model.image_proj.weight"):
        normalize_state_dict({"x.weight": torch.zeros(1)})


# ------------------------------------------------------------------------ checks

def test_check_arch_matches_accepts_agreement() -> None:
    spec = config_from_state_dict(meta_state_dict("rgbd"))
    check_arch_matches(spec, "rgbd", 64, "m.pkl")  # docs/method.md §5: --unet-channel-num N is 2N in rgbd
    check_arch_matches(spec, "rgbd", None, "m.pkl")  # width not given by the user


@pytest.mark.parametrize("mode, n", [("rgb", None), ("rgb", 64), ("rgbd", 128), ("d", 128)])
def test_check_arch_matches_message(mode: str, n: int | None) -> None:
    spec = config_from_state_dict(meta_state_dict("rgbd"))
    path = Path("models") / "bottle_model.pkl"
    with pytest.raises(TransFusionError) as exc:
        check_arch_matches(spec, mode, n, path)
    msg = assert_one_line_error(exc, path)
    assert msg.startswith(f"{path} holds a rgbd network with 128 channels")
    assert "rgbd networks have 2N channels for --unet-channel-num N" in msg  # the rule, stated
    assert msg.endswith("run with --mode rgbd --unet-channel-num 64")
    assert f"--mode {mode}" in msg


def module_from_shapes(shapes: dict[str, tuple[int, ...]]) -> nn.Module:
    """An nn.Module whose state_dict has exactly these keys/shapes (no unet.py needed)."""
    root = nn.Module()
    for key, shape in shapes.items():
        *parents, leaf = key.split(".")
        mod = root
        for name in parents:
            if not hasattr(mod, name):
                mod.add_module(name, nn.Module())
            mod = getattr(mod, name)
        mod.register_buffer(leaf, torch.empty(shape, device="meta"))
    return root


def test_validate_against_model_accepts_a_match_with_or_without_prefix() -> None:
    spec = small_spec()
    shapes = reference_shapes(spec)
    sd = synthetic_state_dict(spec)
    validate_against_model(sd, module_from_shapes(shapes), "a.pkl")
    validate_against_model(sd, module_from_shapes({k[len("model."):]: s for k, s in shapes.items()}),
                           "a.pkl")


def test_validate_against_model_summarises_in_one_line() -> None:
    spec = small_spec()
    net = module_from_shapes(reference_shapes(spec))
    sd = synthetic_state_dict(spec)
    for k in [k for k in sd if k.startswith("model.up.")][:5]:
        del sd[k]
    sd["model.extra.weight"] = torch.empty(2, device="meta")
    sd["model.image_proj.weight"] = torch.empty(32, 3, 3, 3, device="meta")
    path = Path("experiments/x/models/bottle_model.pkl")
    with pytest.raises(TransFusionError) as exc:
        validate_against_model(sd, net, path)
    msg = assert_one_line_error(exc, path)
    assert "5 missing keys (model.up.0.res.norm1.weight" in msg and "+2 more" in msg
    assert "1 unexpected keys (model.extra.weight)" in msg
    assert "model.image_proj.weight file [32,3,3,3] vs network [32,5,3,3]" in msg
    assert "another architecture" in msg


def test_validate_rgb_file_against_d_network_names_the_mismatch() -> None:
    rgb, d = meta_state_dict("rgb"), meta_state_dict("d")
    with pytest.raises(TransFusionError, match=r"5 keys with a different shape \(model.image_proj"):
        validate_against_model(rgb, module_from_shapes({k: tuple(v.shape) for k, v in d.items()}),
                               "m.pkl")
