#!/usr/bin/env python
"""Fetch the authors' released TransFusion runs and foreground masks, unpack and verify them.

    python scripts/download_weights.py {mvtec,visa,mvtec3d,fg_masks,all} [--dest .]
                                       [--archive LOCAL_FILE] [--force]

Weights land in <dest>/experiments/transfusion_<dataset>/models/<category>_model.pkl and
masks in <dest>/fg_masks/<dataset>_masks/<category>/train/good/*.png, wherever they sit in
the archive. Each checkpoint is loaded (weights_only) and its mode checked. Re-running
keeps files that already verify (unless --force); everything is unpacked into a hidden
staging folder under <dest> and renamed into place, so no half-written file is left.
When Google Drive refuses the download (quota, sign-in), download the file in a browser
and pass it with --archive. Exit status: 0 all present, 1 something missing or broken,
2 a usage/download/archive error.
"""
from __future__ import annotations

import argparse
import errno
import http.client
import os
import re
import shutil
import stat
import sys
import tarfile
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
import zipfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path
from typing import IO, Any

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:  # run as a script: make `models` / `utils` importable
    sys.path.insert(0, str(REPO))

from data.catalog import DATASET_CATEGORIES, IMAGE_EXTENSIONS, RELEASED_RUN_MODES, TEXTURE_CATEGORIES  # noqa: E402
from models.checkpoint import config_from_state_dict, load_state_dict_file  # noqa: E402
from utils.core.errors import TransFusionError  # noqa: E402

DRIVE_URL = "https://drive.usercontent.google.com/download"
RUN_IDS = {
    "mvtec": "1KL7_AwO2zKOHfBY5wcMy_Qj49guSQBc4",
    "visa": "1iXY6ILcDo33wywyI_zl7Hh8ch2W_5lMz",
    "mvtec3d": "1RZBZqo-lbywk2lPxnr_H--ERFxbCeXqP",
}
MASK_IDS = {
    "mvtec": "1oWAWDnZBcRcdVMyPk4zW0c6pNDmBqbOv",
    "visa": "1NOJSeAYwfgrQbaQq08B2zL9i9_yXAic2",
    "mvtec3d": "1vMjKhxSH1UdFLIAXu2pr_9UqoknmVUJA",
}
CATEGORIES = DATASET_CATEGORIES
RUN_MODE = RELEASED_RUN_MODES
# texture categories train with an all-ones foreground (docs/method.md §2), so their masks are optional
TEXTURES = TEXTURE_CATEGORIES
TARGETS = ("mvtec", "visa", "mvtec3d", "fg_masks", "all")
IMAGE_EXTS = IMAGE_EXTENSIONS
IMAGE_MAGIC = (b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"BM", b"II*\x00", b"MM\x00*")
STAGING_PREFIX = ".transfusion-staging"
DOWNLOAD_PREFIX = ".transfusion-download"
CHUNK = 1 << 20


# ------------------------------------------------------------------------ download

class _FormParser(HTMLParser):
    """Collects the forms of a page with their input fields (the Drive 'virus scan' page)."""

    def __init__(self) -> None:
        super().__init__()
        self.forms: list[tuple[str, dict[str, str]]] = []
        self._current: dict[str, str] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: (v or "") for k, v in attrs}
        if tag == "form":
            self._current = {}
            self.forms.append((a.get("action", ""), self._current))
        elif tag == "input" and self._current is not None and a.get("name") \
                and a.get("type", "text").lower() != "submit":
            self._current[a["name"]] = a.get("value", "")

    def handle_endtag(self, tag: str) -> None:
        if tag == "form":
            self._current = None


def drive_url(file_id: str) -> str:
    """Direct-download URL of a Drive file (confirm=t skips the large-file warning)."""
    return f"{DRIVE_URL}?{urllib.parse.urlencode({'id': file_id, 'export': 'download', 'confirm': 't'})}"


def _looks_like_html(content_type: str, head: bytes) -> bool:
    start = head[:512].lstrip().lower()
    return "text/html" in content_type.lower() or start.startswith((b"<!doctype html", b"<html"))


def _manual_hint(file_id: str, name: str) -> str:
    target = name.split(" ")[0]  # "fg_masks (visa)" is fetched with the fg_masks target
    return (f"open https://drive.google.com/file/d/{file_id}/view in a browser, download the file, "
            f"then run: python scripts/download_weights.py {target} --archive <downloaded file>")


def _html_reason(page: str) -> str:
    low = page.lower()
    if "quota" in low or "too many users" in low:
        return "the file's download quota is exceeded for now"
    if "accounts.google.com" in low or "sign in" in low:
        return "Drive asks for a Google sign-in"
    if "not found" in low or "does not exist" in low:
        return "Drive says the file does not exist"
    return "the page has no download link"


class _Progress:
    """One status line on stderr, rewritten in place on a terminal, every 30 s otherwise."""

    def __init__(self, label: str, total: int | None) -> None:
        self.label, self.total = label, total
        self.tty = sys.stderr.isatty()
        self.start = self.last = time.monotonic()

    def update(self, done: int, final: bool = False) -> None:
        now = time.monotonic()
        if not final and now - self.last < (0.5 if self.tty else 30.0):
            return
        self.last = now
        rate = done / max(now - self.start, 1e-6) / 1e6
        size = f"{done / 1e6:.1f}" + (f" / {self.total / 1e6:.1f} MB ({100 * done // self.total}%)"
                                      if self.total else " MB")
        line = f"  {self.label}: {size} {rate:.1f} MB/s"
        if self.tty:
            sys.stderr.write("\r" + line + ("\n" if final else ""))
        else:
            sys.stderr.write(line + "\n")
        sys.stderr.flush()


def _read(resp: Any, size: int, done: int, file_id: str, name: str) -> bytes:
    """resp.read(size), with a dropped connection or timeout turned into a one-line error."""
    try:
        return resp.read(size)
    except (http.client.HTTPException, OSError) as e:
        raise TransFusionError(f"the {name} download broke off after {done} bytes "
                               f"({type(e).__name__}); run the command again or "
                               f"{_manual_hint(file_id, name)}") from None


def download_drive_file(file_id: str, out_dir: Path, name: str, *, url: str | None = None,
                        opener: Callable[..., Any] | None = None,
                        max_hops: int = 3) -> Path:
    """Stream a Google Drive file into a hidden temp file in ``out_dir``; return its path.

    Follows the 'cannot scan for viruses' confirmation form; an HTML answer without one
    (quota exceeded, sign-in wall) raises TransFusionError telling how to use --archive.
    The caller deletes the returned file.
    """
    url = url or drive_url(file_id)
    opener = opener or urllib.request.urlopen  # looked up per call so tests can swap it
    out_dir.mkdir(parents=True, exist_ok=True)
    for _ in range(max_hops):
        req = urllib.request.Request(url, headers={"User-Agent": "Mozilla/5.0 (TransFusion downloader)"})
        try:
            resp = opener(req, timeout=60)
        except (urllib.error.URLError, OSError) as e:
            raise TransFusionError(f"cannot download the {name} archive from Google Drive ({e}); "
                                   f"{_manual_hint(file_id, name)}") from None
        with resp:
            ctype = resp.headers.get("Content-Type", "") or ""
            head = _read(resp, 64 * 1024, 0, file_id, name)
            if _looks_like_html(ctype, head):
                page = (head + _read(resp, 4 * CHUNK, len(head), file_id, name)).decode("utf-8", "replace")
                parser = _FormParser()
                parser.feed(page)
                form = next(((act, f) for act, f in parser.forms if "id" in f or "confirm" in f), None)
                if form is None:
                    raise TransFusionError(f"Google Drive sent a web page instead of the {name} "
                                           f"archive ({_html_reason(page)}); {_manual_hint(file_id, name)}")
                action = urllib.parse.urljoin(resp.geturl() or url, form[0] or url)
                url = f"{action.split('?')[0]}?{urllib.parse.urlencode(form[1])}"
                continue
            total = resp.headers.get("Content-Length")
            total_n = int(total) if total and total.isdigit() else None
            fd, tmp = tempfile.mkstemp(prefix=f"{DOWNLOAD_PREFIX}.{os.getpid()}.", suffix=".part",
                                       dir=out_dir)
            try:
                done = 0
                progress = _Progress(f"{name} archive", total_n)
                with os.fdopen(fd, "wb") as f:
                    chunk = head
                    while chunk:
                        f.write(chunk)
                        done += len(chunk)
                        progress.update(done)
                        chunk = _read(resp, CHUNK, done, file_id, name)
                progress.update(done, final=True)
                if total_n is not None and done != total_n:
                    raise TransFusionError(f"the {name} download stopped after {done} of {total_n} bytes; "
                                           f"run the command again or {_manual_hint(file_id, name)}")
            except BaseException:
                Path(tmp).unlink(missing_ok=True)
                raise
            return Path(tmp)
    raise TransFusionError(f"Google Drive kept answering with confirmation pages for the {name} "
                           f"archive; {_manual_hint(file_id, name)}")


# ------------------------------------------------------------------------- unpacking

def archive_kind(path: Path) -> str:
    """'zip' or 'tar' (plain or compressed), from the content, not the file name."""
    with open(path, "rb") as f:
        head = f.read(1024)
    if head.startswith((b"PK\x03\x04", b"PK\x05\x06")):
        return "zip"
    if _looks_like_html("", head):
        raise TransFusionError(f"{path} is a web page, not an archive (a failed Drive download?); "
                               f"download the file again in a browser and pass it with --archive")
    if tarfile.is_tarfile(path):
        return "tar"
    raise TransFusionError(f"{path} is neither a zip nor a tar archive; pass the file downloaded "
                           f"from the Google Drive link with --archive")


def _member_parts(name: str, archive: Path) -> tuple[str, ...]:
    """Path parts of an archive member; refuses absolute paths and '..' (path traversal)."""
    clean = name.replace("\\", "/")
    if clean.startswith("/") or re.match(r"^[A-Za-z]:", clean):
        raise TransFusionError(f"{archive}: refusing an unsafe archive, member {name!r} has an "
                               f"absolute path; check where the file came from")
    parts = tuple(p for p in clean.split("/") if p not in ("", "."))
    if ".." in parts:
        raise TransFusionError(f"{archive}: refusing an unsafe archive, member {name!r} points "
                               f"outside the folder ('..'); check where the file came from")
    return parts


def _link_escapes(base: tuple[str, ...], target: str) -> bool:
    """Whether a link at folder ``base`` pointing at ``target`` leaves the archive root."""
    target = target.replace("\\", "/")
    if target.startswith("/") or re.match(r"^[A-Za-z]:", target):
        return True
    parts = list(base)
    for p in target.split("/"):
        if p in ("", "."):
            continue
        if p == "..":
            if not parts:
                return True
            parts.pop()
        else:
            parts.append(p)
    return False


def _write_member(src: IO[bytes], root: Path, parts: tuple[str, ...], archive: Path) -> None:
    dst = root.joinpath(*parts)
    try:
        dst.parent.mkdir(parents=True, exist_ok=True)
        with open(dst, "wb") as out:
            shutil.copyfileobj(src, out, CHUNK)
    except OSError as e:
        raise TransFusionError(f"{archive}: cannot unpack {'/'.join(parts)} "
                               f"({e.strerror or _first_line(e)}); check the free space under the "
                               f"destination folder") from None


def _link_refused(archive: Path, name: str) -> TransFusionError:
    return TransFusionError(f"{archive}: refusing an unsafe archive, link {name!r} points outside "
                            f"the folder; check where the file came from")


def safe_extract(archive: Path, root: Path) -> None:
    """Unpack regular files of a zip/tar under ``root``; links are never created.

    Absolute paths, '..' and links pointing outside the archive make it fail; links that stay
    inside and special files are skipped (the runs and masks are plain files).
    """
    kind = archive_kind(archive)
    try:
        if kind == "zip":
            with zipfile.ZipFile(archive) as zf:
                for info in zf.infolist():
                    parts = _member_parts(info.filename, archive)
                    if not parts:
                        continue
                    mode = info.external_attr >> 16
                    if stat.S_ISLNK(mode):
                        if _link_escapes(parts[:-1], zf.read(info).decode("utf-8", "replace")):
                            raise _link_refused(archive, info.filename)
                        continue
                    if info.is_dir():
                        root.joinpath(*parts).mkdir(parents=True, exist_ok=True)
                        continue
                    with zf.open(info) as src:
                        _write_member(src, root, parts, archive)
        else:
            with tarfile.open(archive, "r:*") as tf:
                for member in tf:
                    parts = _member_parts(member.name, archive)
                    if not parts:
                        continue
                    if member.issym() or member.islnk():
                        # symlink targets are relative to the link's folder, hard links to the root
                        base = parts[:-1] if member.issym() else ()
                        if _link_escapes(base, member.linkname):
                            raise _link_refused(archive, member.name)
                        continue
                    if member.isdir():
                        root.joinpath(*parts).mkdir(parents=True, exist_ok=True)
                        continue
                    if not member.isfile():
                        continue  # devices, fifos: nothing we need
                    src = tf.extractfile(member)
                    if src is not None:
                        with src:
                            _write_member(src, root, parts, archive)
    except (zipfile.BadZipFile, tarfile.TarError, EOFError, zlib.error) as e:
        raise TransFusionError(f"{archive}: damaged or truncated archive ({_first_line(e)}); "
                               f"download it again (or in a browser) and pass it with --archive"
                               ) from None
    except NotImplementedError as e:  # e.g. Deflate64 zips written by Windows Explorer
        raise TransFusionError(f"{archive}: uses a compression Python cannot read ({_first_line(e)}); "
                               f"unpack it with another tool, re-pack it as .tar.gz and pass that "
                               f"with --archive") from None
    except OSError as e:  # a file and a folder with the same name, disk full, bad names
        raise TransFusionError(f"{archive}: cannot unpack it ({e.strerror or _first_line(e)}); "
                               f"check the free space under the destination folder") from None


def _first_line(e: BaseException) -> str:
    lines = str(e).strip().splitlines()
    return lines[0] if lines else type(e).__name__


def _skipped(path: Path, root: Path) -> bool:
    """macOS zips carry '__MACOSX/…' and '._name' resource forks that look like real files."""
    rel = path.relative_to(root).parts
    return "__MACOSX" in rel or any(p.startswith("._") for p in rel)


# ------------------------------------------------------------------------- verifying

@dataclass
class Result:
    """Verification outcome of one category (a checkpoint or a mask folder)."""

    category: str
    status: str  # ok | kept | installed | missing | broken
    detail: str = ""
    info: str = ""

    @property
    def good(self) -> bool:
        return self.status in ("ok", "kept", "installed")


def verify_model(path: Path, category: str, mode: str) -> Result:
    """Load with the safe loader and check the network's mode; never raises."""
    if not path.is_file():
        return Result(category, "missing", "no file")
    try:
        spec = config_from_state_dict(load_state_dict_file(path), path)
    except TransFusionError as e:
        return Result(category, "broken", str(e))
    info = f"{spec.mode:<5} {spec.n_channels:>4}ch {path.stat().st_size / 1e6:8.1f} MB"
    if spec.mode != mode:
        return Result(category, "broken", f"holds a {spec.mode} network, expected {mode}", info)
    return Result(category, "ok", "", info)


def _image_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir()
                  if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in IMAGE_EXTS)


def verify_masks(good_dir: Path, category: str) -> Result:
    """At least one image, and every image file starts with a known image signature."""
    if not good_dir.is_dir():
        return Result(category, "missing", "no folder")
    images = _image_files(good_dir)
    if not images:
        return Result(category, "broken", f"{good_dir} holds no images")
    for img in images:
        with open(img, "rb") as f:
            if not f.read(8).startswith(IMAGE_MAGIC):
                return Result(category, "broken", f"{img} is not an image file")
    return Result(category, "ok", "", f"{len(images):>5} images")


def print_table(title: str, results: list[Result]) -> None:
    print(title)
    width = max([len(r.category) for r in results] + [8])
    for r in results:
        line = f"  {r.category:<{width}}  {r.status:<9}  {r.info}"
        if r.detail:
            line = f"{line}  {r.detail}" if r.info else f"{line}{r.detail}"
        print(line.rstrip())
    sys.stdout.flush()


def report(title: str, results: list[Result], what: str) -> int:
    """Print the table; return 1 (and say what is wrong) if anything is missing or broken."""
    print_table(title, results)
    bad = [r for r in results if not r.good]
    if not bad:
        return 0
    print(f"error: {what}: missing or broken: " + ", ".join(f"{r.category} ({r.status})" for r in bad),
          file=sys.stderr)
    return 1


# -------------------------------------------------------------------------- installing

def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def clean_stale(dest: Path) -> None:
    """Remove staging folders and partial downloads left by killed runs (their pid is gone)."""
    if not dest.is_dir():
        return
    for entry in dest.iterdir():
        m = re.match(rf"^(?:{re.escape(STAGING_PREFIX)}|{re.escape(DOWNLOAD_PREFIX)})\.(\d+)\.", entry.name)
        if m and not _pid_alive(int(m.group(1))):
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                entry.unlink(missing_ok=True)


def _sync() -> None:
    # data of the unpacked files reaches the disk before the renames that publish them
    if hasattr(os, "sync"):
        os.sync()


def _move_into_place(src: Path, dst: Path) -> None:
    """Rename ``src`` to ``dst`` (replacing a file or folder); copies when on another disk."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    old = None
    if dst.is_dir() and not dst.is_symlink():
        old = dst.with_name(f".{dst.name}.old.{os.getpid()}")
        os.replace(dst, old)
    try:
        try:
            os.replace(src, dst)
        except OSError as e:
            if e.errno != errno.EXDEV:
                raise
            tmp = dst.with_name(f".{dst.name}.{os.getpid()}.tmp")
            if src.is_dir():
                shutil.copytree(src, tmp)
            else:
                shutil.copyfile(src, tmp)
            _sync()
            os.replace(tmp, dst)
    except BaseException:
        if old is not None and not dst.exists():
            os.replace(old, dst)  # put the previous folder back
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


class Staging:
    """A hidden folder under ``dest`` removed on exit, whatever happens."""

    def __init__(self, dest: Path) -> None:
        dest.mkdir(parents=True, exist_ok=True)
        self.path = Path(tempfile.mkdtemp(prefix=f"{STAGING_PREFIX}.{os.getpid()}.", dir=dest))

    def __enter__(self) -> Path:
        return self.path

    def __exit__(self, *exc: object) -> None:
        shutil.rmtree(self.path, ignore_errors=True)


def _obtain(archive: Path | None, file_id: str, name: str, dest: Path) -> tuple[Path, bool]:
    """The archive to unpack and whether it is a temporary download to delete afterwards."""
    if archive is not None:
        if not archive.is_file():
            raise TransFusionError(f"{archive}: archive not found; pass the file downloaded from "
                                   f"the Google Drive link with --archive")
        return archive, False
    print(f"downloading the {name} archive (Google Drive id {file_id})")
    return download_drive_file(file_id, dest, name), True


def unpack(archive: Path, staging: Path) -> Path:
    root = staging / "unpacked"
    root.mkdir()
    safe_extract(archive, root)
    return root


def install_runs(dataset: str, dest: Path, archive: Path | None, force: bool,
                 categories: tuple[str, ...]) -> int:
    """Put every category's checkpoint of one released run in place and verify it."""
    models_dir = dest / "experiments" / f"transfusion_{dataset}" / "models"
    mode = RUN_MODE[dataset]
    title = f"transfusion_{dataset} ({mode}) -> {models_dir}"
    results: dict[str, Result] = {}
    existing: dict[str, Result] = {}
    for cat in categories:
        target = models_dir / f"{cat}_model.pkl"
        if target.exists():
            r = verify_model(target, cat, mode)
            if r.good and not force:
                r.status = "kept"
                results[cat] = r
            else:
                existing[cat] = r
    if len(results) == len(categories):
        print(f"transfusion_{dataset}: all {len(categories)} checkpoints already verified "
              f"(use --force to fetch them again)")
        return report(title, [results[c] for c in categories], f"transfusion_{dataset}")

    src, temporary = _obtain(archive, RUN_IDS[dataset], dataset, dest)
    try:
        with Staging(dest) as staging:
            root = unpack(src, staging)
            if temporary:
                src.unlink(missing_ok=True)  # free the disk before installing
            found: dict[str, list[Path]] = {}
            for p in sorted(root.rglob("*_model.pkl")):
                if p.is_file() and not _skipped(p, root):
                    found.setdefault(p.name[: -len("_model.pkl")], []).append(p)
            if not found:
                raise TransFusionError(f"{archive or 'the downloaded archive'} holds no "
                                       f"<category>_model.pkl file; is it the {dataset} runs archive?")
            _sync()
            for cat in categories:
                if cat in results:
                    continue
                files = found.get(cat, [])
                before = f"; existing file: {existing[cat].detail}" if cat in existing and not \
                    existing[cat].good else ""
                if not files:
                    if cat in existing and existing[cat].good:  # --force, but nothing newer
                        existing[cat].status, existing[cat].detail = "kept", "not in the archive"
                        results[cat] = existing[cat]
                    else:
                        results[cat] = Result(cat, "missing" if not before else "broken",
                                              "not in the archive" + before)
                    continue
                if len(files) > 1:
                    rel = ", ".join(str(f.relative_to(root)) for f in files[:3])
                    results[cat] = Result(cat, "broken", f"the archive holds several: {rel}")
                    continue
                r = verify_model(files[0], cat, mode)
                if not r.good:
                    # name the member as the archive does, not the hidden staging copy
                    rel = files[0].relative_to(root).as_posix()
                    r.detail = f"in the archive: {r.detail.replace(str(files[0]), rel)}" + before
                    results[cat] = r
                    continue
                _move_into_place(files[0], models_dir / f"{cat}_model.pkl")
                r.status = "installed"
                results[cat] = r
            ignored = sorted(set(found) - set(categories))
            if ignored:
                print(f"note: ignored checkpoints of other categories in the archive: {', '.join(ignored)}")
    finally:
        if temporary:
            src.unlink(missing_ok=True)
    return report(title, [results[c] for c in categories], f"transfusion_{dataset}")


def _mask_category_dirs(root: Path, dataset: str) -> dict[str, Path]:
    """Category folders of one dataset's masks: inside '<dataset>_masks' or by their names."""
    holders = sorted(p for p in root.rglob(f"{dataset}_masks") if p.is_dir() and not _skipped(p, root))
    if len(holders) > 1:
        raise TransFusionError(f"the archive holds several {dataset}_masks folders "
                               f"({', '.join(str(h.relative_to(root)) for h in holders[:3])}); "
                               f"keep one and pass it with --archive")
    if holders:
        return {d.name: d for d in sorted(holders[0].iterdir())
                if d.is_dir() and d.name in CATEGORIES[dataset]}
    out: dict[str, Path] = {}
    for cat in CATEGORIES[dataset]:
        dirs = [p for p in root.rglob(cat) if p.is_dir() and not _skipped(p, root)]
        if not dirs:
            continue
        depth = min(len(p.parts) for p in dirs)
        shallowest = [p for p in dirs if len(p.parts) == depth]
        if len(shallowest) > 1:
            raise TransFusionError(f"the archive holds several '{cat}' folders "
                                   f"({', '.join(str(p.relative_to(root)) for p in shallowest[:3])}); "
                                   f"put the masks in one <dataset>_masks folder")
        out[cat] = shallowest[0]
    return out


def _mask_layout(cat_dir: Path, staging: Path, cat: str) -> Path | None:
    """A folder shaped <category>/train/good/*.png built from what the archive holds."""
    if (cat_dir / "train" / "good").is_dir():
        return cat_dir
    if _image_files(cat_dir):  # images directly in the category folder
        shaped = staging / "shaped" / cat
        (shaped / "train").mkdir(parents=True)
        os.replace(cat_dir, shaped / "train" / "good")
        return shaped
    return None


def install_masks(dataset: str, root: Path, staging: Path, dest: Path, force: bool,
                  expected: tuple[str, ...]) -> int:
    """Move one dataset's mask folders from the unpacked archive into place and verify them."""
    masks_dir = dest / "fg_masks" / f"{dataset}_masks"
    title = f"{dataset} foreground masks -> {masks_dir}"
    found = _mask_category_dirs(root, dataset)
    results: dict[str, Result] = {}
    for cat in CATEGORIES[dataset]:
        if cat not in expected and cat not in found:
            continue
        target = masks_dir / cat
        current = verify_masks(target / "train" / "good", cat)
        if current.good and not force:
            current.status = "kept"
            results[cat] = current
            continue
        if cat not in found:
            if current.good:  # --force, but the archive has nothing newer
                current.status, current.detail = "kept", "not in the archive"
                results[cat] = current
            elif current.status == "missing":
                results[cat] = Result(cat, "missing", "not in the archive")
            else:
                results[cat] = Result(cat, "broken", f"not in the archive; existing: {current.detail}")
            continue
        shaped = _mask_layout(found[cat], staging, cat)
        if shaped is None:
            results[cat] = Result(cat, "broken", f"in the archive: {found[cat].relative_to(root)} "
                                                 f"holds neither train/good/ nor images")
            continue
        r = verify_masks(shaped / "train" / "good", cat)
        if not r.good:
            # name files as the archive does, not by their hidden staging copies
            detail = r.detail.replace(f"{root}{os.sep}", "").replace(f"{staging}{os.sep}", "")
            r.detail = f"in the archive: {detail}"
            results[cat] = r
            continue
        _sync()
        _move_into_place(shaped, target)
        r.status = "installed"
        results[cat] = r
    order = [c for c in CATEGORIES[dataset] if c in results]
    return report(title, [results[c] for c in order], f"{dataset} foreground masks")


def _masks_present(dest: Path, dataset: str, expected: tuple[str, ...]) -> bool:
    base = dest / "fg_masks" / f"{dataset}_masks"
    return all(verify_masks(base / c / "train" / "good", c).good for c in expected)


def run_masks(dest: Path, archive: Path | None, force: bool, wanted: tuple[str, ...] | None) -> int:
    """Foreground masks: three downloads, or one local archive holding one or more datasets."""
    def expected_for(ds: str) -> tuple[str, ...]:
        if wanted is not None:
            return tuple(c for c in wanted if c in CATEGORIES[ds])
        return tuple(c for c in CATEGORIES[ds] if c not in TEXTURES)

    if archive is not None:
        src, _ = _obtain(archive, "", "fg_masks", dest)
        with Staging(dest) as staging:
            root = unpack(src, staging)
            datasets = [ds for ds in CATEGORIES if _mask_category_dirs(root, ds)]
            if not datasets:
                raise TransFusionError(f"{archive} holds no foreground masks (no <dataset>_masks "
                                       f"folder nor category folders); is it a masks archive?")
            return max(install_masks(ds, root, staging, dest, force, expected_for(ds))
                       for ds in datasets)

    rc = 0
    for ds, file_id in MASK_IDS.items():
        if wanted is not None and not expected_for(ds):
            continue
        if not force and _masks_present(dest, ds, expected_for(ds)):
            print(f"{ds} foreground masks: already in place (use --force to fetch them again)")
            continue
        src, _ = _obtain(None, file_id, f"fg_masks ({ds})", dest)
        try:
            with Staging(dest) as staging:
                root = unpack(src, staging)
                src.unlink(missing_ok=True)
                rc = max(rc, install_masks(ds, root, staging, dest, force, expected_for(ds)))
        finally:
            src.unlink(missing_ok=True)
    return rc


# --------------------------------------------------------------------------------- CLI

def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description="Download, unpack and verify the released TransFusion runs / foreground masks.")
    p.add_argument("what", choices=TARGETS, help="which archive(s): a released run, the masks, or all")
    p.add_argument("--dest", default=".", type=Path,
                   help="folder that receives experiments/ and fg_masks/ (default: .)")
    p.add_argument("--archive", type=Path, default=None,
                   help="use this local zip/tar(.gz) (downloaded in a browser) instead of downloading")
    p.add_argument("--force", action="store_true",
                   help="replace files that are already present and verified")
    # testing aid: restrict the expected categories (comma-separated)
    p.add_argument("--categories", default=None, help=argparse.SUPPRESS)
    return p.parse_args(argv)


def _wanted(args: argparse.Namespace, dataset: str | None) -> tuple[str, ...] | None:
    if args.categories is None:
        return None
    cats = tuple(c for c in (s.strip() for s in args.categories.split(",")) if c)
    known = set(CATEGORIES[dataset]) if dataset else {c for cs in CATEGORIES.values() for c in cs}
    unknown = [c for c in cats if c not in known]
    if unknown or not cats:
        raise TransFusionError(f"--categories: unknown {', '.join(unknown) or '(empty)'}; "
                               f"choose from {', '.join(sorted(known))}")
    return cats


def run(args: argparse.Namespace) -> int:
    dest: Path = args.dest
    if args.archive is not None and args.what == "all":
        raise TransFusionError("--archive takes one archive: name its target (mvtec, visa, "
                               "mvtec3d or fg_masks) instead of all")
    dest.mkdir(parents=True, exist_ok=True)
    clean_stale(dest)
    targets = ("mvtec", "visa", "mvtec3d", "fg_masks") if args.what == "all" else (args.what,)
    rc = 0
    for target in targets:
        try:
            if target == "fg_masks":
                rc = max(rc, run_masks(dest, args.archive, args.force, _wanted(args, None)))
            else:
                cats = _wanted(args, target) or CATEGORIES[target]
                rc = max(rc, install_runs(target, dest, args.archive, args.force, cats))
        except TransFusionError as e:
            if len(targets) == 1:
                raise
            # `all`: one refused download should not stop the other archives
            print(f"error: {e}", file=sys.stderr)
            rc = 2
    return rc


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        return run(args)
    except TransFusionError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\ninterrupted; nothing half-written was left in place", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
