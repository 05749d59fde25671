"""Self-contained HTML reports: a page per category (results/<category>/report.html from -c test,
predictions/<category>/<invocation>/report.html from each -c predict), the run's results/index.html
and predictions/<category>/index.html over every -c predict into a category.

Each page is one file that opens without network access: pictures are embedded as data URIs,
thumbnails encoded at the size they are shown, no external style or script, and one small
inline script that sorts the image table. The image table lists mistakes (decision against the
label) first, then the rest by score; at most MAX_IMAGE_ROWS rows with pictures per page, the
remaining images listed by name and score (mistakes always get pictures, on further pages if
need be). Every row carries its numbers as data attributes too (data-path, data-score as in
per_image.csv, data-label, data-decision), so a program can check a page against the CSV.
"""
from __future__ import annotations

import base64
import html
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import cv2
import numpy as np

from utils.core.atomic import atomic_write_text
from utils.reports.crops import DETAIL_SIDE, MAX_ZOOM
from utils.reports.published import PUBLISHED_METRICS, Comparison, compare_mean
from utils.reports.tables import METRIC_KEYS, METRIC_NAMES, fmt_delta, fmt_pct, mean_metrics
from utils.run.thresholds import Threshold

THUMB_SIDE = 128        # px, the size thumbnails are encoded at and shown at
MAX_IMAGE_ROWS = 500    # image rows with pictures per page
_JPEG_QUALITY = 85

_STYLE = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:24px;color:#222;max-width:1400px}
h1{font-size:22px;margin:0 0 4px}h2{font-size:17px;margin:28px 0 8px;border-bottom:1px solid #ddd}
table{border-collapse:collapse;font-size:13px}th,td{padding:3px 8px;border-bottom:1px solid #eee;text-align:left}
th{background:#f4f4f4;position:sticky;top:0}td.num,th.num{text-align:right;font-variant-numeric:tabular-nums}
th.sort{cursor:pointer;text-decoration:underline dotted}.facts td:first-child{color:#666}
tr.mistake{background:#fff1f0}.defect{color:#b00020;font-weight:600}.ok{color:#1b5e20}
.neg{color:#b00020}.pos{color:#1b5e20}.note{color:#555;font-style:italic}
img.thumb{display:block;image-rendering:pixelated}.curves img{margin-right:16px;border:1px solid #ddd}
"""
# Sorts the rows of a table body by a numeric data attribute; clicking again reverses.
_SCRIPT = """
function sortRows(th,key){var tb=th.closest('table').tBodies[0],rows=Array.prototype.slice.call(tb.rows);
var up=th.getAttribute('data-dir')!=='up';th.setAttribute('data-dir',up?'up':'down');
rows.sort(function(a,b){var d=parseFloat(a.dataset[key])-parseFloat(b.dataset[key]);return up?d:-d;});
rows.forEach(function(r){tb.appendChild(r);});}
"""


def picture_uri(bgr: np.ndarray, photo: bool = True) -> str:
    """A BGR uint8 picture as a data URI: JPEG for photographs and heat maps, PNG for masks and plots."""
    ok, buf = cv2.imencode(".jpg" if photo else ".png", bgr,
                           [cv2.IMWRITE_JPEG_QUALITY, _JPEG_QUALITY] if photo else [])
    if not ok:
        raise OSError("could not encode a report picture")
    kind = "jpeg" if photo else "png"
    return f"data:image/{kind};base64," + base64.b64encode(buf.tobytes()).decode("ascii")


def thumbnail_uris(pictures: dict[str, np.ndarray]) -> dict[str, str]:
    """render_thumbnails' pictures as data URIs (the binary ground truth as PNG)."""
    return {name: picture_uri(img, photo=name != "ground truth") for name, img in pictures.items()}


@dataclass
class ImageRow:
    """One image of a report: what per_image.csv (or predictions.jsonl) says, and its pictures."""

    path: str
    name: str
    score: float
    label: int | None           # None: unlabelled (-c predict)
    decision: str | None        # "defect", "OK" or None (no threshold)
    pictures: dict[str, str] = field(default_factory=dict)  # column -> data URI
    steps: int | None = None
    detail: str | None = None   # where the detail pictures were cut from, in words

    @property
    def mistake(self) -> bool:
        return self.label is not None and self.decision in ("defect", "OK") and \
            (self.decision == "defect") != bool(self.label)


@dataclass
class ThresholdLine:
    """A threshold shown on a page; with labels, what it does on this test set."""

    threshold: Threshold
    in_use: bool
    false_alarms: int | None = None   # good images it calls defect
    n_good: int | None = None
    misses: int | None = None         # defective images it calls OK
    n_defective: int | None = None


@dataclass
class FigureSection:
    """A table of further figures on a category page (e.g. MVTec AD 2's protocol)."""

    title: str
    rows: list[tuple[str, float | None, str]]   # (figure, value in [0, 1] or None, what it is)
    note: str = ""


@dataclass
class CategoryPage:
    """Everything a category page shows."""

    title: str
    facts: list[tuple[str, str]]
    columns: list[str]                              # picture columns, in order
    rows: list[ImageRow]
    metrics: dict[str, Any] | None = None           # None: no labels (-c predict)
    comparison: Comparison | None = None
    published_source: str | None = None
    thresholds: list[ThresholdLine] = field(default_factory=list)
    curves: list[tuple[str, str]] = field(default_factory=list)  # (title, data URI)
    curves_note: str | None = None
    notes: list[str] = field(default_factory=list)
    sections: list[FigureSection] = field(default_factory=list)
    detail_columns: list[str] = field(default_factory=list)  # pictures at DETAIL_SIDE, after ``columns``


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _document(title: str, body: list[str], script: bool) -> str:
    return "\n".join(["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
                      f"<title>{_e(title)}</title><style>{_STYLE}</style>",
                      f"<script>{_SCRIPT}</script>" if script else "", "</head><body>", *body,
                      "</body></html>", ""])


def _delta_cell(value: float | None) -> str:
    cls = "" if value is None or round(100 * value, 2) == 0 else (" pos" if value > 0 else " neg")
    return f'<td class="num{cls}" data-metric-delta>{_e(fmt_delta(value))}</td>'


def _facts(facts: list[tuple[str, str]]) -> str:
    rows = "".join(f"<tr><td>{_e(k)}</td><td>{_e(v)}</td></tr>" for k, v in facts)
    return f'<table class="facts">{rows}</table>'


def metrics_table(metrics: dict[str, Any], comparison: Comparison | None, source: str | None) -> list[str]:
    """metric | ours | published | Δ, in percent (published and Δ only where figures exist)."""
    with_pub = comparison is not None
    head = "<tr><th>metric</th><th class=num>ours</th>" + (
        "<th class=num>published</th><th class=num>Δ = ours − published</th>" if with_pub else "") + "</tr>"
    lines = ['<table class="metrics">', head]
    for k in METRIC_KEYS:
        cells = f'<td>{_e(METRIC_NAMES[k])}</td><td class="num" data-metric="{k}">{fmt_pct(metrics.get(k))}</td>'
        if with_pub and k in PUBLISHED_METRICS:
            cells += f'<td class="num" data-metric-published>{fmt_pct(comparison.published[k])}</td>'
            cells += _delta_cell(comparison.delta[k])
        elif with_pub:
            cells += "<td></td><td></td>"
        lines.append(f"<tr>{cells}</tr>")
    lines.append("</table>")
    if source:
        lines.append(f'<p class="note">published: the authors\' figures for the released run ({_e(source)})</p>')
    return lines


def _section(section: FigureSection) -> list[str]:
    lines = [f"<h2>{_e(section.title)}</h2>", '<table class="figures"><tr><th>figure</th><th class=num>ours</th>'
             "<th>what it is</th></tr>"]
    for name, value, what in section.rows:
        lines.append(f'<tr><td>{_e(name)}</td><td class="num" data-figure="{_e(name)}">{fmt_pct(value)}</td>'
                     f"<td>{_e(what)}</td></tr>")
    lines.append("</table>")
    if section.note:
        lines.append(f'<p class="note">{_e(section.note)}</p>')
    return lines


def _threshold_table(lines_: list[ThresholdLine]) -> list[str]:
    if not lines_:
        return ['<p class="note">no decision threshold: run -c calibrate on good images or -c test on labelled '
                'ones (F1-max), or pass --threshold</p>']
    counted = any(t.false_alarms is not None for t in lines_)
    out = ['<table class="thresholds"><tr><th>threshold</th><th class=num>value</th><th>rule</th><th>in use</th>'
           + ("<th class=num>false alarms here</th><th class=num>missed defects here</th>" if counted else "")
           + "<th>from</th></tr>"]
    for t in lines_:
        counts = ""
        if counted:
            counts = (f"<td class=num>{'' if t.false_alarms is None else f'{t.false_alarms} of {t.n_good}'}</td>"
                      f"<td class=num>{'' if t.misses is None else f'{t.misses} of {t.n_defective}'}</td>")
        out.append(f'<tr data-threshold="{_e(t.threshold.kind)}" data-value="{t.threshold.value!r}">'
                   f"<td>{_e(t.threshold.kind)}</td><td class=num>{t.threshold.value:.6f}</td>"
                   f"<td>{_e(t.threshold.rule)}</td><td>{'yes' if t.in_use else ''}</td>"
                   f"{counts}<td>{_e(t.threshold.source)}</td></tr>")
    out.append("</table>")
    return out


def order_rows(rows: Sequence[ImageRow]) -> list[ImageRow]:
    """Mistakes first, then the rest; each group by descending score (ties by name)."""
    key = (lambda r: (-r.score, r.name))
    return sorted((r for r in rows if r.mistake), key=key) + sorted((r for r in rows if not r.mistake), key=key)


def paginate(rows: Sequence[ImageRow], limit: int = MAX_IMAGE_ROWS) -> tuple[list[list[ImageRow]], list[ImageRow]]:
    """(pages of picture rows, rows only listed by name and score). Page 1 holds the first ``limit``
    rows in report order; mistakes beyond it fill further pages; the other rows are listed."""
    ordered = order_rows(rows)
    first = ordered[:limit]
    rest = ordered[limit:]
    extra_mistakes = [r for r in rest if r.mistake]
    pages = [first] + [extra_mistakes[i:i + limit] for i in range(0, len(extra_mistakes), limit)]
    return pages, [r for r in rest if not r.mistake]


def _label_text(label: int | None) -> str:
    return "" if label is None else ("defective" if label else "good")


def _decision_cell(decision: str | None) -> str:
    if not decision:
        return "<td></td>"
    return f'<td class="{"defect" if decision == "defect" else "ok"}">{_e(decision)}</td>'


def _row_attrs(r: ImageRow, order: int) -> str:
    label = "" if r.label is None else str(int(r.label))
    return (f'data-order="{order}" data-path="{_e(r.path)}" data-score="{r.score:.8f}" data-label="{label}" '
            f'data-decision="{_e(r.decision or "")}"' + (' class="mistake"' if r.mistake else ""))


def _labelled(rows: Sequence[ImageRow]) -> bool:
    return any(r.label is not None for r in rows)


def _picture_cell(r: ImageRow, column: str, side: int) -> str:
    if column not in r.pictures:
        return "<td></td>"
    return (f'<td><img class="thumb" src="{r.pictures[column]}" width="{side}" height="{side}" '
            f'alt="{_e(column)} of {_e(r.name)}" data-column="{_e(column)}"></td>')


def image_table(rows: list[ImageRow], columns: list[str], start: int, detail_columns: Sequence[str] = ()) -> list[str]:
    """The picture rows of one page; ``start``: the report-order number of the first row;
    ``detail_columns`` are shown at DETAIL_SIDE after the thumbnails."""
    labelled = _labelled(rows)
    head = ('<tr><th class="sort num" onclick="sortRows(this,\'order\')">#</th><th>image</th>'
            + "".join(f"<th>{_e(c)}</th>" for c in (*columns, *detail_columns))
            + '<th class="sort num" onclick="sortRows(this,\'score\')">score</th>'
            + ("<th>label</th>" if labelled else "") + "<th>decision</th></tr>")
    out = ['<table class="images"><thead>', head, "</thead><tbody>"]
    for i, r in enumerate(rows):
        pics = "".join(_picture_cell(r, c, THUMB_SIDE) for c in columns)
        pics += "".join(_picture_cell(r, c, DETAIL_SIDE) for c in detail_columns)
        label = f"<td>{_label_text(r.label)}</td>" if labelled else ""
        name = _e(r.name) + (f'<br><span class="note" data-detail>{_e(r.detail)}</span>' if r.detail else "")
        out.append(f"<tr {_row_attrs(r, start + i)}><td class=num>{start + i}</td><td>{name}</td>{pics}"
                   f"<td class=num>{r.score:.6f}</td>{label}{_decision_cell(r.decision)}</tr>")
    out.append("</tbody></table>")
    return out


def listed_table(rows: list[ImageRow], start: int) -> list[str]:
    """The images without pictures: name, score, label, decision."""
    labelled = _labelled(rows)
    out = ['<table class="listed"><thead><tr><th class="sort num" onclick="sortRows(this,\'order\')">#</th>'
           '<th>image</th><th class="sort num" onclick="sortRows(this,\'score\')">score</th>'
           + ("<th>label</th>" if labelled else "") + "<th>decision</th></tr></thead><tbody>"]
    for i, r in enumerate(rows):
        label = f"<td>{_label_text(r.label)}</td>" if labelled else ""
        out.append(f"<tr {_row_attrs(r, start + i)}><td class=num>{start + i}</td><td>{_e(r.name)}</td>"
                   f"<td class=num>{r.score:.6f}</td>{label}{_decision_cell(r.decision)}</tr>")
    out.append("</tbody></table>")
    return out


def _page_body(page: CategoryPage, rows: list[ImageRow], start: int, links: list[str]) -> list[str]:
    n_mistakes = sum(r.mistake for r in page.rows)
    body = [f"<h1>{_e(page.title)}</h1>", _facts(page.facts)]
    body += [f'<p class="note">{_e(n)}</p>' for n in page.notes]
    if page.metrics is not None:
        body += ["<h2>Metrics</h2>", *metrics_table(page.metrics, page.comparison, page.published_source)]
    for section in page.sections:
        body += _section(section)
    body += ["<h2>Decision threshold</h2>", *_threshold_table(page.thresholds)]
    if page.metrics is not None:
        body.append("<h2>Curves</h2>")
        if page.curves:
            body.append('<div class="curves">' + "".join(
                f'<img src="{uri}" alt="{_e(t)}" data-curve="{_e(t)}">' for t, uri in page.curves) + "</div>")
        if page.curves_note:
            body.append(f'<p class="note" id="curves-note">{_e(page.curves_note)}</p>')
    body.append("<h2>Images</h2>")
    summary = f"{len(page.rows)} images"
    if page.rows and page.rows[0].label is not None:
        summary += f", {n_mistakes} mistake{'s' if n_mistakes != 1 else ''} (decision against the label), shown first"
    body.append(f'<p class="note">{summary}; click # or score to sort. Heat maps share one scale.</p>')
    if page.detail_columns:
        body.append('<p class="note">Details: a square of each image at its own resolution around its largest '
                    'defect region (images without one: around the highest map value), outlined on the input '
                    f'thumbnail and shown at most {MAX_ZOOM}× enlarged.</p>')
    if links:
        body.append("<p>pages: " + " ".join(links) + "</p>")
    body += image_table(rows, page.columns, start, page.detail_columns)
    return body


def render_category_pages(page: CategoryPage, stem: str = "report", limit: int = MAX_IMAGE_ROWS) -> dict[str, str]:
    """File name -> HTML for a category: ``<stem>.html`` and, past ``limit`` mistakes, ``<stem>-2.html``..."""
    pages, listed = paginate(page.rows, limit)
    names = [f"{stem}.html"] + [f"{stem}-{i}.html" for i in range(2, len(pages) + 1)]
    out: dict[str, str] = {}
    start = 1
    for i, (name, rows) in enumerate(zip(names, pages)):
        links = [f'<a href="{n}">{j + 1}</a>' if j != i else f"<b>{j + 1}</b>" for j, n in enumerate(names)] \
            if len(names) > 1 else []
        body = _page_body(page, rows, start, links)
        if i == 0 and listed:
            body += [f"<h2>More images ({len(listed)}, without pictures)</h2>",
                     *listed_table(listed, start + sum(len(p) for p in pages))]
        out[name] = _document(page.title, body, script=True)
        start += len(rows)
    return out


def write_category_report(folder: Path, page: CategoryPage, stem: str = "report") -> Path:
    """Write the category's page(s) atomically; returns the first page's path."""
    pages = render_category_pages(page, stem)
    for name in list(folder.glob(f"{stem}-*.html")):
        if name.name not in pages:
            name.unlink()  # pages of an earlier, longer report
    for name, text in pages.items():
        atomic_write_text(folder / name, text)
    return folder / f"{stem}.html"


@dataclass
class IndexEntry:
    """One tested category of a run, as its summary.json records it."""

    category: str
    metrics: dict[str, Any]
    comparison: Comparison | None
    threshold: dict[str, Any] | None     # the decision threshold in use
    n_images: int
    n_mistakes: int | None
    report: str                          # relative link to the category page
    extra: dict[str, float | None] = field(default_factory=dict)  # further columns (MVTec AD 2's), in [0, 1]


def render_index(run: str, entries: list[IndexEntry], facts: list[tuple[str, str]]) -> str:
    """The run's overview: every tested category with its metrics (published and Δ where known),
    the mean row (like with like), the decision threshold and the link to its page."""
    rows = {e.category: e.metrics for e in entries}
    published = {e.category: e.comparison.published if e.comparison else None for e in entries}
    mean_cmp = compare_mean(rows, published)  # type: ignore[arg-type]
    shown = [(k, mean_cmp is not None and k in PUBLISHED_METRICS) for k in METRIC_KEYS]
    extra = list(dict.fromkeys(name for e in entries for name in e.extra))
    head = "<tr><th>category</th>" + "".join(
        f"<th class=num>{_e(METRIC_NAMES[k])}</th>" + ("<th class=num>published</th><th class=num>Δ</th>" if p else "")
        for k, p in shown) + "".join(f"<th class=num>{_e(name)}</th>" for name in extra) + \
        "<th>threshold</th><th class=num>mistakes</th><th class=num>images</th></tr>"
    lines = [f"<h1>{_e(run)}: results</h1>", _facts(facts), "<h2>Categories</h2>",
             '<table class="index">', head]

    def cells(metrics: dict[str, Any], cmp: Comparison | None) -> str:
        out = ""
        for k, with_pub in shown:
            out += f'<td class="num" data-metric="{k}">{fmt_pct(metrics.get(k))}</td>'
            if with_pub:
                out += ('<td class="num">n/a</td><td class="num">n/a</td>' if cmp is None else
                        f'<td class="num" data-metric-published>{fmt_pct(cmp.published[k])}</td>'
                        + _delta_cell(cmp.delta[k]))
        return out

    def extra_cells(values: dict[str, float | None]) -> str:
        return "".join(f'<td class="num" data-figure="{_e(name)}">{fmt_pct(values.get(name))}</td>' for name in extra)

    extra_mean: dict[str, float | None] = {}
    for name in extra:
        known = [e.extra[name] for e in entries if e.extra.get(name) is not None]
        extra_mean[name] = float(np.mean(known)) if len(known) == len(entries) else None  # like with like
    for e in entries:
        t = e.threshold
        t_text = "" if t is None else f"{t['kind']} {t['value']:.6f}"
        mistakes = "" if e.n_mistakes is None else str(e.n_mistakes)
        lines.append(f'<tr data-category="{_e(e.category)}"><td><a href="{_e(e.report)}">{_e(e.category)}</a></td>'
                     f"{cells(e.metrics, e.comparison)}{extra_cells(e.extra)}<td>{_e(t_text)}</td>"
                     f"<td class=num>{mistakes}</td>"
                     f"<td class=num>{e.n_images}</td></tr>")
    lines.append(f'<tr data-category="mean"><td><b>mean</b></td>{cells(mean_metrics(rows), mean_cmp)}'
                 f'{extra_cells(extra_mean)}'
                 f'<td></td><td></td><td></td></tr>')
    lines.append("</table>")
    if mean_cmp is not None:
        lines.append('<p class="note">mean: our mean, and the published figures averaged over the same '
                     'categories; Δ = ours − published, in percentage points</p>')
    return _document(f"{run}: results", lines, script=False)


@dataclass
class PredictionEntry:
    """One -c predict into a category, as its folder's summary.json records it."""

    folder: str                  # the invocation's folder name (its local start time)
    written: str
    input: str                   # --input as given
    scored: int
    skipped: int
    defects: int | None          # None: no threshold decided
    decided_by: str              # the threshold in words, or "scores only"
    report: str                  # relative link to the invocation's report.html


def render_prediction_index(title: str, entries: list[PredictionEntry], facts: list[tuple[str, str]]) -> str:
    """predictions/<category>/index.html: every -c predict into the category, newest first, linked to its page."""
    lines = [f"<h1>{_e(title)}</h1>", _facts(facts), "<h2>Predictions</h2>", '<table class="predictions">',
             "<tr><th>folder</th><th>written</th><th>input</th><th class=num>scored</th><th class=num>skipped</th>"
             "<th class=num>defects</th><th>decided by</th></tr>"]
    for e in entries:
        defects = "" if e.defects is None else str(e.defects)
        lines.append(f'<tr data-folder="{_e(e.folder)}"><td><a href="{_e(e.report)}">{_e(e.folder)}</a></td>'
                     f"<td>{_e(e.written)}</td><td>{_e(e.input)}</td><td class=num>{e.scored}</td>"
                     f"<td class=num>{e.skipped}</td><td class=num>{defects}</td><td>{_e(e.decided_by)}</td></tr>")
    lines.append("</table>")
    return _document(title, lines, script=False)
