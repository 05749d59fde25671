"""scripts/download_weights.py with local archives and a local stand-in for Google Drive."""
from __future__ import annotations

import http.server
import importlib.util
import io
import os
import subprocess
import sys
import tarfile
import threading
import urllib.parse
import urllib.request
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from models.checkpoint import config_from_state_dict, load_state_dict_file
from models.unet import UNetConfig
from tests.fixtures.checkpoints import synthetic_state_dict
from tests.fixtures.helpers import REPO
from utils.core.errors import TransFusionError

SCRIPT = REPO / "scripts" / "download_weights.py"
PNG = (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00\x00\x01\x00\x00\x00\x01\x08\x00\x00\x00\x00"
       b":~\x9bU\x00\x00\x00\nIDATx\x9cc\xf8\x0f\x00\x00\x01\x01\x00\x05\x18\xd8N\x00\x00\x00\x00"
       b"IEND\xaeB`\x82")  # a valid 1x1 grayscale PNG


@pytest.fixture(scope="module")
def dw():
    """The script imported as a module, so tests can call main() and its helpers."""
    spec = importlib.util.spec_from_file_location("download_weights", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses look their module up while the class is built
    try:
        spec.loader.exec_module(mod)
        yield mod
    finally:
        sys.modules.pop(spec.name, None)


def tiny_checkpoint(mode: str, seed: int = 0) -> bytes:
    """A small state dict in the released key layout that config_from_state_dict accepts."""
    spec = UNetConfig(mode=mode, n_channels=32 if mode != "rgbd" else 64, ch_mults=(1, 2), attn=(False, True),
                      group_conv=(True, True), n_blocks=1)
    buf = io.BytesIO()
    torch.save(synthetic_state_dict(spec, device="cpu", seed=seed), buf)
    return buf.getvalue()


def make_zip(path: Path, members: dict[str, bytes], links: dict[str, str] | None = None) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
        for name, target in (links or {}).items():
            info = zipfile.ZipInfo(name)
            info.external_attr = (0o120777 << 16)  # S_IFLNK
            zf.writestr(info, target)
    return path


def make_tar(path: Path, members: dict[str, bytes], links: dict[str, str] | None = None,
             hardlinks: dict[str, str] | None = None) -> Path:
    with tarfile.open(path, "w:gz") as tf:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
        for kind, table in ((tarfile.SYMTYPE, links or {}), (tarfile.LNKTYPE, hardlinks or {})):
            for name, target in table.items():
                info = tarfile.TarInfo(name)
                info.type = kind
                info.linkname = target
                tf.addfile(info)
    return path


def runs_members(dataset: str, cats: list[str], mode: str, prefix: str = "") -> dict[str, bytes]:
    return {f"{prefix}experiments/transfusion_{dataset}/models/{c}_model.pkl": tiny_checkpoint(mode, i)
            for i, c in enumerate(cats)}


def model_path(dest: Path, dataset: str, cat: str) -> Path:
    return dest / "experiments" / f"transfusion_{dataset}" / "models" / f"{cat}_model.pkl"


def leftovers(dest: Path) -> list[str]:
    """Hidden staging folders, partial downloads or temp files the script could leave."""
    return [str(p.relative_to(dest)) for p in dest.rglob("*")
            if p.name.startswith(".transfusion-") or p.name.endswith((".part", ".tmp"))
            or ".old." in p.name]


def run_main(dw, capsys, *argv: str) -> tuple[int, str, str]:
    rc = dw.main([str(a) for a in argv])
    out = capsys.readouterr()
    return rc, out.out, out.err


# ----------------------------------------------------------------------- runs archives

def test_zip_archive_installs_verifies_and_rerun_is_a_noop(dw, capsys, tmp_path: Path) -> None:
    members = runs_members("mvtec", ["bottle", "cable"], "rgb", prefix="release/")
    members["__MACOSX/release/experiments/transfusion_mvtec/models/._bottle_model.pkl"] = b"\x00junk"
    members["release/readme.txt"] = b"hello"
    archive = make_zip(tmp_path / "mvtec.zip", members)
    dest = tmp_path / "out"

    rc, out, err = run_main(dw, capsys, "mvtec", "--dest", dest, "--archive", archive,
                            "--categories", "bottle,cable")
    assert rc == 0, err
    for cat in ("bottle", "cable"):
        path = model_path(dest, "mvtec", cat)
        assert config_from_state_dict(load_state_dict_file(path)).mode == "rgb"
        assert f"{cat}" in out and "installed" in out
    assert leftovers(dest) == []
    stats = {c: model_path(dest, "mvtec", c).stat() for c in ("bottle", "cable")}

    rc, out, err = run_main(dw, capsys, "mvtec", "--dest", dest, "--archive", archive,
                            "--categories", "bottle,cable")
    assert rc == 0 and "already verified" in out and "kept" in out
    for cat, st in stats.items():
        now = model_path(dest, "mvtec", cat).stat()
        assert (now.st_ino, now.st_mtime_ns) == (st.st_ino, st.st_mtime_ns)

    # already complete: no archive (nor network) needed at all
    rc, out, _ = run_main(dw, capsys, "mvtec", "--dest", dest, "--categories", "bottle,cable")
    assert rc == 0 and "already verified" in out

    rc, out, _ = run_main(dw, capsys, "mvtec", "--dest", dest, "--archive", archive,
                          "--categories", "bottle,cable", "--force")
    assert rc == 0 and "installed" in out
    assert model_path(dest, "mvtec", "bottle").stat().st_ino != stats["bottle"].st_ino
    assert leftovers(dest) == []


def test_tar_gz_archive_with_flat_layout_for_rgbd(dw, capsys, tmp_path: Path) -> None:
    archive = make_tar(tmp_path / "mvtec3d.tar.gz", {
        "bagel_model.pkl": tiny_checkpoint("rgbd", 1),
        "deep/er/cable_gland_model.pkl": tiny_checkpoint("rgbd", 2),
    })
    archive = archive.rename(tmp_path / "release.bin")  # detected by content, not by name
    rc, out, err = run_main(dw, capsys, "mvtec3d", "--dest", tmp_path, "--archive", archive,
                            "--categories", "bagel,cable_gland")
    assert rc == 0, err
    assert config_from_state_dict(load_state_dict_file(model_path(tmp_path, "mvtec3d", "cable_gland"))).mode == "rgbd"
    assert "rgbd" in out
    assert leftovers(tmp_path) == []


def test_missing_category_exits_1_and_names_it(dw, capsys, tmp_path: Path) -> None:
    archive = make_zip(tmp_path / "m.zip", runs_members("mvtec", ["bottle", "cable"], "rgb"))
    rc, out, err = run_main(dw, capsys, "mvtec", "--dest", tmp_path / "d", "--archive", archive,
                            "--categories", "bottle,cable,capsule")
    assert rc == 1
    assert "capsule (missing)" in err and "bottle" not in err
    assert model_path(tmp_path / "d", "mvtec", "bottle").is_file()  # the rest is installed
    assert not model_path(tmp_path / "d", "mvtec", "capsule").exists()


def test_default_expected_list_is_all_15_mvtec_categories(dw, capsys, tmp_path: Path) -> None:
    archive = make_zip(tmp_path / "m.zip", runs_members("mvtec", ["bottle"], "rgb"))
    rc, _, err = run_main(dw, capsys, "mvtec", "--dest", tmp_path / "d", "--archive", archive)
    assert rc == 1
    for cat in dw.CATEGORIES["mvtec"][1:]:
        assert f"{cat} (missing)" in err
    assert len(dw.CATEGORIES["mvtec"]) == 15 and len(dw.CATEGORIES["visa"]) == 12
    assert len(dw.CATEGORIES["mvtec3d"]) == 10


def test_wrong_mode_and_corrupt_checkpoints_are_not_installed(dw, capsys, tmp_path: Path) -> None:
    good = tiny_checkpoint("rgb", 3)
    archive = make_zip(tmp_path / "visa.zip", {
        "candle_model.pkl": tiny_checkpoint("rgbd", 4),     # wrong network for VisA
        "capsules_model.pkl": good[: len(good) // 2],       # truncated
        "cashew_model.pkl": good,
    })
    dest = tmp_path / "d"
    rc, out, err = run_main(dw, capsys, "visa", "--dest", dest, "--archive", archive,
                            "--categories", "candle,capsules,cashew")
    assert rc == 1
    assert "candle (broken)" in err and "capsules (broken)" in err and "cashew" not in err
    assert "holds a rgbd network, expected rgb" in out
    assert not model_path(dest, "visa", "candle").exists()
    assert not model_path(dest, "visa", "capsules").exists()
    assert model_path(dest, "visa", "cashew").is_file()
    assert leftovers(dest) == []


def test_broken_existing_file_is_replaced_and_good_ones_kept(dw, capsys, tmp_path: Path) -> None:
    dest = tmp_path / "d"
    archive = make_zip(tmp_path / "m.zip", runs_members("mvtec", ["bottle", "cable"], "rgb"))
    assert run_main(dw, capsys, "mvtec", "--dest", dest, "--archive", archive,
                    "--categories", "bottle,cable")[0] == 0
    model_path(dest, "mvtec", "bottle").write_bytes(b"half a file")
    cable_ino = model_path(dest, "mvtec", "cable").stat().st_ino
    rc, out, _ = run_main(dw, capsys, "mvtec", "--dest", dest, "--archive", archive,
                          "--categories", "bottle,cable")
    assert rc == 0
    assert load_state_dict_file(model_path(dest, "mvtec", "bottle"))
    assert model_path(dest, "mvtec", "cable").stat().st_ino == cable_ino


def test_duplicate_category_in_archive_is_reported(dw, capsys, tmp_path: Path) -> None:
    members = runs_members("mvtec", ["bottle"], "rgb", prefix="a/")
    members.update(runs_members("mvtec", ["bottle"], "rgb", prefix="b/"))
    archive = make_zip(tmp_path / "m.zip", members)
    rc, out, err = run_main(dw, capsys, "mvtec", "--dest", tmp_path / "d", "--archive", archive,
                            "--categories", "bottle")
    assert rc == 1 and "several" in out and "bottle (broken)" in err


# ----------------------------------------------------------------- unsafe archives

@pytest.mark.parametrize("build", [
    lambda p: make_zip(p / "a.zip", {"../evil_model.pkl": b"x", "bottle_model.pkl": b"y"}),
    lambda p: make_zip(p / "a.zip", {"ok/../../evil_model.pkl": b"x"}),
    lambda p: make_zip(p / "a.zip", {f"{p}/evil_model.pkl": b"x"}),
    lambda p: make_zip(p / "a.zip", {"..\\evil_model.pkl": b"x"}),
    lambda p: make_tar(p / "a.tgz", {"../evil_model.pkl": b"x"}),
    lambda p: make_tar(p / "a.tgz", {f"{p}/evil_model.pkl": b"x"}),
    lambda p: make_tar(p / "a.tgz", {}, links={"models": "../../outside"}),
    lambda p: make_tar(p / "a.tgz", {}, links={"x/models": "/etc"}),
    lambda p: make_tar(p / "a.tgz", {}, hardlinks={"bottle_model.pkl": "../secret"}),
    lambda p: make_zip(p / "a.zip", {}, links={"models": "../.."}),
], ids=["zip-dotdot", "zip-nested-dotdot", "zip-abs", "zip-backslash", "tar-dotdot", "tar-abs",
        "tar-symlink-up", "tar-symlink-abs", "tar-hardlink-up", "zip-symlink-up"])
def test_path_traversal_archives_are_rejected(dw, capsys, tmp_path: Path, build) -> None:
    archive = build(tmp_path)
    dest = tmp_path / "dest"
    rc, out, err = run_main(dw, capsys, "mvtec", "--dest", dest, "--archive", archive,
                            "--categories", "bottle")
    assert rc == 2
    assert "unsafe archive" in err and str(archive) in err
    assert not (tmp_path / "evil_model.pkl").exists()
    assert not model_path(dest, "mvtec", "bottle").exists()
    assert leftovers(dest) == []


def test_links_inside_the_archive_are_skipped_not_followed(dw, tmp_path: Path) -> None:
    archive = make_tar(tmp_path / "a.tgz", {"m/bottle_model.pkl": b"data"},
                       links={"m/alias_model.pkl": "bottle_model.pkl"},
                       hardlinks={"m/hard_model.pkl": "m/bottle_model.pkl"})
    root = tmp_path / "x"
    root.mkdir()
    dw.safe_extract(archive, root)
    assert (root / "m" / "bottle_model.pkl").read_bytes() == b"data"
    assert not (root / "m" / "alias_model.pkl").exists()
    assert not (root / "m" / "hard_model.pkl").exists()


@pytest.mark.parametrize("content, fragment", [
    (b"<!DOCTYPE html><html><body>Google Drive - Quota exceeded</body></html>", "web page"),
    (os.urandom(2048), "neither a zip nor a tar"),
    (b"", "neither a zip nor a tar"),
])
def test_non_archives_are_explained(dw, capsys, tmp_path: Path, content: bytes, fragment: str) -> None:
    archive = tmp_path / "download.zip"
    archive.write_bytes(content)
    rc, _, err = run_main(dw, capsys, "visa", "--dest", tmp_path / "d", "--archive", archive)
    assert rc == 2 and fragment in err and str(archive) in err
    assert err.count("\n") == 1


def test_truncated_zip_is_explained(dw, capsys, tmp_path: Path) -> None:
    full = make_zip(tmp_path / "full.zip", runs_members("mvtec", ["bottle"], "rgb")).read_bytes()
    archive = tmp_path / "cut.zip"
    archive.write_bytes(full[: len(full) // 2])
    rc, _, err = run_main(dw, capsys, "mvtec", "--dest", tmp_path / "d", "--archive", archive,
                          "--categories", "bottle")
    assert rc == 2 and str(archive) in err and ("damaged" in err or "neither" in err)
    assert leftovers(tmp_path / "d") == []


def test_archive_without_checkpoints(dw, capsys, tmp_path: Path) -> None:
    archive = make_zip(tmp_path / "other.zip", {"notes.txt": b"nothing here"})
    rc, _, err = run_main(dw, capsys, "mvtec", "--dest", tmp_path / "d", "--archive", archive)
    assert rc == 2 and "no <category>_model.pkl" in err


def test_usage_errors(dw, capsys, tmp_path: Path) -> None:
    rc, _, err = run_main(dw, capsys, "all", "--dest", tmp_path, "--archive", tmp_path / "x.zip")
    assert rc == 2 and "--archive" in err
    rc, _, err = run_main(dw, capsys, "mvtec", "--dest", tmp_path, "--archive", tmp_path / "nope.zip")
    assert rc == 2 and "nope.zip" in err and "not found" in err
    rc, _, err = run_main(dw, capsys, "mvtec", "--dest", tmp_path, "--categories", "bagel")
    assert rc == 2 and "unknown bagel" in err


def test_stale_staging_of_dead_processes_is_cleaned(dw, tmp_path: Path) -> None:
    dead = tmp_path / ".transfusion-staging.999999999.abc"
    (dead / "unpacked").mkdir(parents=True)
    part = tmp_path / ".transfusion-download.999999999.xyz.part"
    part.write_bytes(b"partial")
    mine = tmp_path / f".transfusion-staging.{os.getpid()}.def"
    mine.mkdir()
    dw.clean_stale(tmp_path)
    assert not dead.exists() and not part.exists() and mine.exists()


# ---------------------------------------------------------------------- fg masks

def mask_members(prefix: str, cats: list[str], layout: str = "train/good/") -> dict[str, bytes]:
    return {f"{prefix}{c}/{layout}{i:03d}.png": PNG for c in cats for i in range(3)}


def test_fg_masks_from_dataset_folder(dw, capsys, tmp_path: Path) -> None:
    members = mask_members("stuff/mvtec_masks/", ["bottle", "cable", "carpet"])
    members["stuff/mvtec_masks/bottle/train/good/.DS_Store"] = b"\x00"
    archive = make_zip(tmp_path / "masks.zip", members)
    dest = tmp_path / "d"
    rc, out, err = run_main(dw, capsys, "fg_masks", "--dest", dest, "--archive", archive,
                            "--categories", "bottle,cable")
    assert rc == 0, err
    for cat in ("bottle", "cable", "carpet"):  # an optional texture category is installed too
        good = dest / "fg_masks" / "mvtec_masks" / cat / "train" / "good"
        assert sorted(p.name for p in good.glob("*.png")) == ["000.png", "001.png", "002.png"]
    assert leftovers(dest) == []
    ino = (dest / "fg_masks" / "mvtec_masks" / "bottle").stat().st_ino
    rc, out, _ = run_main(dw, capsys, "fg_masks", "--dest", dest, "--archive", archive,
                          "--categories", "bottle,cable")
    assert rc == 0 and "kept" in out and "installed" not in out
    assert (dest / "fg_masks" / "mvtec_masks" / "bottle").stat().st_ino == ino


def test_fg_masks_from_bare_category_folders(dw, capsys, tmp_path: Path) -> None:
    # category folders with the images directly inside: reshaped into train/good
    archive = make_tar(tmp_path / "visa_masks.tar.gz", mask_members("masks/", ["candle", "pcb1"], ""))
    rc, out, err = run_main(dw, capsys, "fg_masks", "--dest", tmp_path, "--archive", archive,
                            "--categories", "candle,pcb1")
    assert rc == 0, err
    assert len(list((tmp_path / "fg_masks" / "visa_masks" / "pcb1" / "train" / "good").glob("*.png"))) == 3


def test_fg_masks_missing_and_broken_categories(dw, capsys, tmp_path: Path) -> None:
    members = mask_members("mvtec3d_masks/", ["bagel"])
    members["mvtec3d_masks/foam/train/good/000.png"] = b"not a png"
    archive = make_zip(tmp_path / "m.zip", members)
    rc, out, err = run_main(dw, capsys, "fg_masks", "--dest", tmp_path / "d", "--archive", archive,
                            "--categories", "bagel,foam,rope")
    assert rc == 1
    assert "foam (broken)" in err and "rope (missing)" in err and "bagel" not in err
    assert not (tmp_path / "d" / "fg_masks" / "mvtec3d_masks" / "foam").exists()


def test_fg_masks_default_expectations_skip_textures(dw) -> None:
    assert "carpet" not in [c for c in dw.CATEGORIES["mvtec"] if c not in dw.TEXTURES]
    assert dw.TEXTURES == {"carpet", "grid", "leather", "tile", "wood", "zipper"}


def test_masks_archive_without_masks(dw, capsys, tmp_path: Path) -> None:
    archive = make_zip(tmp_path / "m.zip", {"x/y.txt": b"1"})
    rc, _, err = run_main(dw, capsys, "fg_masks", "--dest", tmp_path, "--archive", archive)
    assert rc == 2 and "no foreground masks" in err


# ------------------------------------------------------------ download (local server)

class FakeDrive:
    """Serves /download like drive.usercontent.google.com: a virus-scan form, then the file."""

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.mode = "confirm"  # confirm | direct | quota | short
        self.requests: list[str] = []
        drive = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def do_GET(self) -> None:
                drive.requests.append(self.path)
                q = dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(self.path).query))
                data = drive.files.get(q.get("id", ""))
                if drive.mode == "quota" or data is None:
                    self._send(b"<html><body>Sorry, you can't view or download this file at this "
                               b"time. Too many users have viewed or downloaded this file recently."
                               b"</body></html>", "text/html; charset=utf-8")
                elif drive.mode == "confirm" and "uuid" not in q:
                    form = (f'<!DOCTYPE html><html><body><p>Google Drive can\'t scan this file for '
                            f'viruses.</p><form id="download-form" action="/download" method="get">'
                            f'<input type="submit" id="uc-download-link" value="Download anyway"/>'
                            f'<input type="hidden" name="id" value="{q["id"]}">'
                            f'<input type="hidden" name="export" value="download">'
                            f'<input type="hidden" name="confirm" value="t">'
                            f'<input type="hidden" name="uuid" value="1234-abcd"></form></body></html>')
                    self._send(form.encode(), "text/html; charset=utf-8")
                elif drive.mode == "short":
                    self.send_response(200)
                    self.send_header("Content-Type", "application/octet-stream")
                    self.send_header("Content-Length", str(len(data) + 1000))
                    self.end_headers()
                    self.wfile.write(data)
                    self.close_connection = True
                else:
                    self._send(data, "application/octet-stream")

            def _send(self, body: bytes, ctype: str) -> None:
                self.send_response(200)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/download"
        # a short poll: shutdown() waits for the loop to notice, and every test tears one down
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)


@pytest.fixture
def drive(dw, monkeypatch) -> Iterator[FakeDrive]:
    fake = FakeDrive()
    fake.thread.start()
    monkeypatch.setattr(dw, "DRIVE_URL", fake.url)
    # never route the loopback requests through a proxy from the environment
    no_proxy = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    monkeypatch.setattr(urllib.request, "urlopen", no_proxy.open)
    yield fake
    fake.server.shutdown()
    fake.server.server_close()


def test_download_follows_the_virus_scan_form(dw, drive, tmp_path: Path) -> None:
    drive.files["abc"] = os.urandom(300_000)
    out = dw.download_drive_file("abc", tmp_path, "mvtec")
    try:
        assert out.read_bytes() == drive.files["abc"]
        assert out.parent == tmp_path and out.name.startswith(".transfusion-download.")
        assert len(drive.requests) == 2 and "uuid=1234-abcd" in drive.requests[1]
        assert "confirm=t" in drive.requests[0]
    finally:
        out.unlink()


def test_download_direct_answer(dw, drive, tmp_path: Path) -> None:
    drive.mode = "direct"
    drive.files["abc"] = b"PK\x05\x06" + bytes(18)
    out = dw.download_drive_file("abc", tmp_path, "mvtec")
    assert out.read_bytes() == drive.files["abc"] and len(drive.requests) == 1
    out.unlink()


def test_download_quota_page_suggests_archive(dw, drive, tmp_path: Path) -> None:
    drive.mode = "quota"
    drive.files["abc"] = b"x"
    with pytest.raises(TransFusionError) as exc:
        dw.download_drive_file("abc", tmp_path, "visa")
    msg = str(exc.value)
    assert "quota" in msg and "--archive" in msg and "drive.google.com/file/d/abc" in msg
    assert "download_weights.py visa --archive" in msg and "\n" not in msg
    assert list(tmp_path.iterdir()) == []


def test_download_cut_short_leaves_nothing(dw, drive, tmp_path: Path) -> None:
    drive.mode = "short"
    drive.files["abc"] = os.urandom(50_000)
    with pytest.raises(TransFusionError, match="download"):
        dw.download_drive_file("abc", tmp_path, "mvtec")
    assert list(tmp_path.iterdir()) == []


def test_download_unreachable_host(dw, tmp_path: Path) -> None:
    with pytest.raises(TransFusionError, match="--archive"):
        dw.download_drive_file("abc", tmp_path, "mvtec", url="http://127.0.0.1:9/download?id=abc")


def test_main_downloads_unpacks_and_verifies(dw, drive, capsys, tmp_path: Path) -> None:
    zip_path = make_zip(tmp_path / "r.zip", runs_members("mvtec", ["bottle"], "rgb"))
    drive.files[dw.RUN_IDS["mvtec"]] = zip_path.read_bytes()
    dest = tmp_path / "dest"
    rc, out, err = run_main(dw, capsys, "mvtec", "--dest", dest, "--categories", "bottle")
    assert rc == 0, err
    assert model_path(dest, "mvtec", "bottle").is_file()
    assert leftovers(dest) == [] and sorted(p.name for p in dest.iterdir()) == ["experiments"]

    masks = make_zip(tmp_path / "fg.zip", mask_members("mvtec_masks/", ["bottle"]))
    drive.files[dw.MASK_IDS["mvtec"]] = masks.read_bytes()
    rc, out, err = run_main(dw, capsys, "fg_masks", "--dest", dest, "--categories", "bottle")
    assert rc == 0, err
    assert (dest / "fg_masks" / "mvtec_masks" / "bottle" / "train" / "good" / "000.png").is_file()
    n = len(drive.requests)
    rc, out, _ = run_main(dw, capsys, "fg_masks", "--dest", dest, "--categories", "bottle")
    assert rc == 0 and "already in place" in out and len(drive.requests) == n


def test_main_quota_failure_is_one_line_exit_2(dw, drive, capsys, tmp_path: Path) -> None:
    drive.mode = "quota"
    rc, _, err = run_main(dw, capsys, "mvtec3d", "--dest", tmp_path, "--categories", "bagel")
    assert rc == 2 and "--archive" in err and err.count("\n") == 1
    assert leftovers(tmp_path) == [] and list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------- shell wrappers

@pytest.mark.parametrize("name", ["mvtec", "visa", "mvtec3d", "fg_masks"])
def test_wrappers_exist_and_forward(name: str) -> None:
    wrapper = REPO / "scripts" / f"download_{name}.sh"
    text = wrapper.read_text()
    assert os.access(wrapper, os.X_OK)
    assert f'download_weights.py" {name} "$@"' in text and text.startswith("#!/bin/sh")


@pytest.mark.slow
def test_wrapper_runs_end_to_end(tmp_path: Path) -> None:
    archive = make_zip(tmp_path / "m.zip", runs_members("mvtec", ["bottle"], "rgb"))
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    proc = subprocess.run([str(REPO / "scripts" / "download_mvtec.sh"), "--dest", str(tmp_path / "d"),
                           "--archive", str(archive), "--categories", "bottle"],
                          capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert model_path(tmp_path / "d", "mvtec", "bottle").is_file()


def test_all_continues_after_one_refused_download(dw, drive, capsys, tmp_path: Path) -> None:
    # mvtec / mvtec3d refuse the VisA-only --categories, the VisA masks get a quota page:
    # each failure is reported and the VisA runs still install
    drive.mode = "direct"
    drive.files[dw.RUN_IDS["visa"]] = make_zip(
        tmp_path / "v.zip", runs_members("visa", ["candle"], "rgb")).read_bytes()
    dest = tmp_path / "d"
    rc, out, err = run_main(dw, capsys, "all", "--dest", dest, "--categories", "candle")
    assert rc == 2
    assert model_path(dest, "visa", "candle").is_file()
    assert "unknown candle" in err and "quota" in err
    assert leftovers(dest) == []


def test_force_keeps_files_the_archive_lacks(dw, capsys, tmp_path: Path) -> None:
    dest = tmp_path / "d"
    both = make_zip(tmp_path / "both.zip", runs_members("mvtec", ["bottle", "cable"], "rgb"))
    assert run_main(dw, capsys, "mvtec", "--dest", dest, "--archive", both,
                    "--categories", "bottle,cable")[0] == 0
    only_bottle = make_zip(tmp_path / "one.zip", runs_members("mvtec", ["bottle"], "rgb"))
    rc, out, _ = run_main(dw, capsys, "mvtec", "--dest", dest, "--archive", only_bottle,
                          "--categories", "bottle,cable", "--force")
    assert rc == 0 and "not in the archive" in out
    assert model_path(dest, "mvtec", "cable").is_file()
