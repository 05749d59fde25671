"""Never crash on bad input: malformed VisA split csv files thrown at data/discovery.py (the rules:
tests/fixtures/fuzzing.py)."""

import csv
import io
from pathlib import Path
from typing import Any, Callable

import pytest
from hypothesis import given
from hypothesis import strategies as st

from data.datasets import find_test_samples, find_train_images
from tests.fixtures.fuzzing import clean_error, fuzz
from tests.fixtures.layouts import make_visa_released
from utils.core.errors import TransFusionError

# ----------------------------------------------------------------------------- VisA split csv


def _visa_root(base: Path) -> tuple[Path, list[list[str]]]:
    root = make_visa_released(base, category="candle", n_train=3, n_test_good=1, n_anomaly=2, size=16)
    with open(root / "split_csv" / "1cls.csv", newline="") as f:
        rows = list(csv.reader(f))
    return root, rows


@pytest.fixture(scope="module")
def visa(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[list[str]], Any, Any]:
    root, rows = _visa_root(tmp_path_factory.mktemp("visa"))
    train = find_train_images("visa", root, "candle")
    test = find_test_samples("visa", root, "candle")
    return root, rows, train, test


@fuzz(30)
@given(data=st.data())
def test_visa_csv_dialects_read_the_same(visa: tuple[Path, list[list[str]], Any, Any], data: st.DataObject) -> None:
    root, rows, train, test = visa
    header, body = rows[0], rows[1:]
    order = data.draw(st.permutations(range(len(header))), label="column order")
    extra = data.draw(st.booleans(), label="extra column")
    head = [data.draw(st.sampled_from([h, h.upper(), f" {h} ", h.capitalize()]), label=h) for h in header]
    out_rows = [[head[i] for i in order] + (["note"] if extra else [])]
    for r in body:
        vals = [r[i] for i in order] + (["x, \"quoted\""] if extra else [])
        out_rows.append(vals)
    if data.draw(st.booleans(), label="a row with a trailing extra field"):
        out_rows[1] = out_rows[1] + ["surplus"]
    quoting = data.draw(st.sampled_from([csv.QUOTE_MINIMAL, csv.QUOTE_ALL, csv.QUOTE_NONNUMERIC]), label="quoting")
    newline = data.draw(st.sampled_from(["\n", "\r\n"]), label="line ending")
    buf = io.StringIO()
    csv.writer(buf, quoting=quoting, lineterminator=newline).writerows(out_rows)
    text = buf.getvalue() + data.draw(st.sampled_from(["", newline, newline * 3]), label="trailing blank lines")
    bom = data.draw(st.booleans(), label="BOM")
    (root / "split_csv" / "1cls.csv").write_bytes((b"\xef\xbb\xbf" if bom else b"") + text.encode())
    assert find_train_images("visa", root, "candle") == train
    assert find_test_samples("visa", root, "candle") == test


def _bad_csv_cases() -> list[tuple[str, Callable[[list[list[str]]], bytes], str]]:
    def rows_to_bytes(rows: list[list[str]]) -> bytes:
        buf = io.StringIO()
        csv.writer(buf).writerows(rows)
        return buf.getvalue().encode()

    def edit(fn: Callable[[list[list[str]]], None]) -> Callable[[list[list[str]]], bytes]:
        def make(rows: list[list[str]]) -> bytes:
            rows = [list(r) for r in rows]
            fn(rows)
            return rows_to_bytes(rows)
        return make

    def set_cell(row: int, col: int, value: str) -> Callable[[list[list[str]]], None]:
        return lambda rows: rows[row].__setitem__(col, value)

    def drop_column(col: int) -> Callable[[list[list[str]]], None]:
        return lambda rows: [r.pop(col) for r in rows]

    last = -1  # an anomaly row (make_visa_released writes them last)
    return [
        ("empty file", lambda rows: b"", "lacks column"),
        ("only a BOM", lambda rows: b"\xef\xbb\xbf", "lacks column"),
        ("header only", edit(lambda rows: rows.__delitem__(slice(1, None))), "rows for object 'candle'"),
        ("missing label column", edit(drop_column(2)), "label"),
        ("missing mask column", edit(drop_column(4)), "mask"),
        ("unknown split", edit(set_cell(1, 1, "validation")), "line 2"),
        ("unknown label", edit(set_cell(2, 2, "defect")), "line 3"),
        ("row for a missing file", edit(set_cell(1, 3, "candle/Data/Images/Normal/nope.JPG")), "nope.JPG"),
        ("anomaly in train split", edit(set_cell(last, 1, "train")), "train split"),
        ("anomaly without mask", edit(set_cell(last, 4, "")), "no mask path"),
        ("empty image path", edit(set_cell(1, 3, "")), "empty image path"),
        ("not utf-8", lambda rows: rows_to_bytes(rows).replace(b"Normal", b"Norm\xe9l", 1), "1cls.csv"),
        ("NUL byte", lambda rows: rows_to_bytes(rows).replace(b"Normal", b"Nor\x00mal", 1), "1cls.csv"),
        ("giant field", lambda rows: rows_to_bytes(rows) + b"candle,train,normal," + b"a" * 200_000 + b",\n",
         "1cls.csv"),
        ("unterminated quote", lambda rows: rows_to_bytes(rows).replace(b"candle,train", b"\"candle,train", 1),
         "1cls.csv"),
    ]


@pytest.mark.parametrize("case", _bad_csv_cases(), ids=lambda c: c[0])
def test_malformed_visa_csv(tmp_path: Path, case: tuple[str, Callable[[list[list[str]]], bytes], str]) -> None:
    _, make, fragment = case
    root, rows = _visa_root(tmp_path)
    csv_path = root / "split_csv" / "1cls.csv"
    csv_path.write_bytes(make(rows))
    errors = []
    for find in (find_train_images, find_test_samples):
        try:
            find("visa", root, "candle")
        except TransFusionError as exc:
            errors.append(str(exc))
    # a bad row may sit in the split one reader skips, but some reader must refuse the file
    assert errors, f"{case[0]}: neither reader complained"
    for msg in errors:
        assert "\n" not in msg and (str(csv_path) in msg or str(root) in msg), msg
    assert any(fragment in msg for msg in errors), errors


def test_missing_mask_file_named_in_the_error(tmp_path: Path) -> None:
    root, rows = _visa_root(tmp_path)
    mask = root / rows[-1][4]
    mask.unlink()
    with pytest.raises(TransFusionError) as info:
        find_test_samples("visa", root, "candle")
    clean_error(info.value, mask)


@fuzz(30)
@given(body=st.binary(max_size=200), header=st.booleans())
def test_random_bytes_as_visa_csv(tmp_path: Path, body: bytes, header: bool) -> None:
    root = tmp_path / "visa_noise"
    (root / "candle" / "Data").mkdir(parents=True, exist_ok=True)
    csv_path = root / "split_csv" / "1cls.csv"
    csv_path.parent.mkdir(exist_ok=True)
    csv_path.write_bytes((b"object,split,label,image,mask\n" if header else b"") + body)
    for find in (find_train_images, find_test_samples):
        with pytest.raises(TransFusionError) as info:
            find("visa", root, "candle")
        clean_error(info.value, csv_path)
