"""Never crash on bad input, never run a stranger's code: malformed checkpoints thrown at
models/checkpoint.py (the rules: tests/fixtures/fuzzing.py)."""

import io
import os
import pickle
import subprocess
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any, Callable

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from models.checkpoint import config_from_state_dict, load_state_dict_file, validate_against_model
from models.unet import UNetConfig
from tests.fixtures.checkpoints import reference_shapes
from tests.fixtures.fuzzing import clean_error, fuzz
from utils.core.errors import TransFusionError
from utils.run.settings import check_arch_matches

# ----------------------------------------------------------------------------- checkpoints


SPEC = UNetConfig(mode="rgb", n_channels=32, ch_mults=(1, 2), attn=(False, True), group_conv=(True, True),
                  n_blocks=1)


def _state_dict(spec: UNetConfig, device: str = "cpu") -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    if device == "meta":
        return {k: torch.empty(s, device="meta") for k, s in reference_shapes(spec).items()}
    return {k: torch.randn(s, generator=gen) for k, s in reference_shapes(spec).items()}


def _torch_bytes(obj: Any, **kw: Any) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf, **kw)
    return buf.getvalue()


CKPT = _torch_bytes(_state_dict(SPEC))


@fuzz(40)
@given(prefix=st.sampled_from([b"", b"PK\x03\x04", b"PK\x05\x06", b"\x80\x02", b"\x80\x04\x95", b"\x80\x02\x8a\n"]),
       body=st.binary(max_size=400))
def test_random_bytes_checkpoint(tmp_path: Path, prefix: bytes, body: bytes) -> None:
    p = tmp_path / "bottle_model.pkl"
    p.write_bytes(prefix + body)
    with pytest.raises(TransFusionError) as info:
        load_state_dict_file(p)
    msg = clean_error(info.value, p)
    assert "permissions" not in msg  # corrupt content is not an I/O problem


@fuzz(30)
@given(frac=st.floats(0.0, 1.0, exclude_max=True))
def test_truncated_checkpoint(tmp_path: Path, frac: float) -> None:
    p = tmp_path / "bottle_model.pkl"
    p.write_bytes(CKPT[: int(frac * len(CKPT))])
    with pytest.raises(TransFusionError) as info:
        load_state_dict_file(p)
    msg = clean_error(info.value, p)
    assert "permissions" not in msg


@fuzz(40)
@given(flips=st.lists(st.tuples(st.floats(0.0, 1.0, exclude_max=True), st.integers(0, 255)), min_size=1, max_size=8))
def test_corrupted_checkpoint_bytes(tmp_path: Path, flips: list[tuple[float, int]]) -> None:
    data = bytearray(CKPT)
    for where, value in flips:
        data[int(where * len(data))] = value
    p = tmp_path / "bottle_model.pkl"
    p.write_bytes(bytes(data))
    try:
        sd = load_state_dict_file(p)
        spec = config_from_state_dict(sd, p)
    except TransFusionError as exc:
        msg = clean_error(exc, p)
        assert "permissions" not in msg
        return
    # flipped bytes inside tensor data cannot be detected (no checksum); the structure must be intact
    assert isinstance(spec, UNetConfig) and all(isinstance(v, torch.Tensor) for v in sd.values())


class _Payload:
    def __init__(self, func: Callable[..., Any], *args: Any) -> None:
        self.func, self.args = func, args

    def __reduce__(self) -> tuple[Any, ...]:
        return (self.func, self.args)


def _payloads(sentinel: Path) -> dict[str, Any]:
    import builtins

    code = f"open({str(sentinel)!r}, 'w').close()"
    return {
        "os.system": _Payload(os.system, f"touch '{sentinel}'"),
        "os.mkdir": _Payload(os.mkdir, str(sentinel)),
        "builtins.exec": _Payload(builtins.exec, code),
        "builtins.eval": _Payload(builtins.eval, code),
        "subprocess.call": _Payload(subprocess.call, ["touch", str(sentinel)]),
    }


@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.parametrize("container", ["torch zip", "torch legacy", "pickle 2", "pickle 5", "nested in wrapper"])
@pytest.mark.parametrize("payload", ["os.system", "os.mkdir", "builtins.exec", "builtins.eval", "subprocess.call"])
def test_pickle_payload_never_runs(tmp_path: Path, container: str, payload: str) -> None:
    sentinel = tmp_path / "PAYLOAD_RAN"
    evil = _payloads(sentinel)[payload]
    sd = {"model.image_proj.weight": torch.zeros(2), "model.x": evil}
    p = tmp_path / "bottle_model.pkl"
    if container == "torch zip":
        p.write_bytes(_torch_bytes(sd))
    elif container == "torch legacy":
        p.write_bytes(_torch_bytes(sd, _use_new_zipfile_serialization=False))
    elif container == "pickle 2":
        p.write_bytes(pickle.dumps(evil, protocol=2))
    elif container == "pickle 5":
        p.write_bytes(pickle.dumps(sd, protocol=5))
    else:
        p.write_bytes(_torch_bytes({"state_dict": {"model": sd}}))
    with pytest.raises(TransFusionError) as info:
        load_state_dict_file(p)
    clean_error(info.value, p)
    if container in ("torch zip", "torch legacy"):
        assert "refused" in str(info.value)  # said as such, not as a corrupt file
    assert not sentinel.exists(), "the pickled payload ran"


@fuzz(30)
@given(values=st.dictionaries(
    st.text(min_size=1, max_size=12),
    st.one_of(st.none(), st.integers(), st.floats(allow_nan=True), st.text(max_size=5), st.binary(max_size=5),
              st.lists(st.integers(), max_size=3), st.dictionaries(st.text(max_size=3), st.integers(), max_size=2)),
    min_size=0, max_size=5),
    with_prefix=st.booleans())
def test_dict_of_non_tensors(tmp_path: Path, values: dict[str, Any], with_prefix: bool) -> None:
    obj = {("model." + k if with_prefix else k): v for k, v in values.items()}
    p = tmp_path / "bottle_model.pkl"
    p.write_bytes(_torch_bytes(obj))
    with pytest.raises(TransFusionError) as info:
        load_state_dict_file(p)
    clean_error(info.value, p)


def test_checkpoint_of_another_architecture(tmp_path: Path) -> None:
    from models.unet import TransFusionUNet, UNetConfig

    # a different network altogether
    p = tmp_path / "resnet_model.pkl"
    p.write_bytes(_torch_bytes({"conv1.weight": torch.zeros(8, 3, 7, 7), "fc.weight": torch.zeros(10, 8)}))
    with pytest.raises(TransFusionError) as info:
        load_state_dict_file(p)
    assert "not a TransFusion checkpoint" in clean_error(info.value, p)

    # a TransFusion network of another mode and width than asked for
    d_spec = UNetConfig(mode="d", n_channels=32, ch_mults=(1, 2), attn=(False, True), group_conv=(True, True),
                        n_blocks=1)
    p = tmp_path / "tire_model.pkl"
    p.write_bytes(_torch_bytes(_state_dict(d_spec)))
    sd = load_state_dict_file(p)
    spec = config_from_state_dict(sd, p)
    assert spec == d_spec
    with pytest.raises(TransFusionError) as info:
        check_arch_matches(spec, "rgb", 32, p)
    assert "--mode d" in clean_error(info.value, p)
    with pytest.raises(TransFusionError) as info:
        validate_against_model({k.removeprefix("model."): v for k, v in sd.items()},
                               TransFusionUNet(UNetConfig(**asdict(replace(d_spec, mode="rgb")))), p)
    assert "does not fit the network" in clean_error(info.value, p)


@fuzz(40)
@given(data=st.data())
def test_infer_arch_on_mangled_state_dicts(data: st.DataObject) -> None:
    sd = _state_dict(SPEC, device="meta")
    keys = sorted(sd)
    for key in data.draw(st.lists(st.sampled_from(keys), max_size=4, unique=True), label="dropped"):
        del sd[key]
    for key in data.draw(st.lists(st.sampled_from(keys), max_size=4, unique=True), label="reshaped"):
        shape = data.draw(st.lists(st.integers(0, 40), max_size=4), label=f"shape of {key}")
        sd[key] = torch.empty(shape, device="meta")
    for key in data.draw(st.lists(st.from_regex(r"model\.(down|up)\.[0-9]{1,3}\.(res|attn|conv)\.conv1\.weight",
                                                fullmatch=True), max_size=2), label="added"):
        sd[key] = torch.empty(3, 3, device="meta")
    try:
        spec = config_from_state_dict(sd, "fuzz_model.pkl")
    except TransFusionError as exc:
        clean_error(exc, "fuzz_model.pkl")
        return
    assert isinstance(spec, UNetConfig) and spec.n_channels > 0 and all(m > 0 for m in spec.ch_mults)
