"""``RUN_DIR/report.html``: written at the end of ``torchgraft train`` and rebuilt by ``torchgraft report``, one
self-contained page (every section, every PNG of the run folder embedded and decodable, nothing fetched), read
back with :mod:`html.parser`; a folder missing pieces says what is missing; a folder that holds no run is one
line and exit 2; rendered in headless Chromium (slow)."""

from __future__ import annotations

import base64
import csv
import io
import json
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import pytest
from PIL import Image

from torchgraft.app.report import SECTIONS
from torchgraft.cli.main import main

CHROMIUM = Path("/usr/bin/chromium")
_SMALL = ("model.json", "history.csv", "history.json", "plan.txt")  # a run folder's small files


class _Page(HTMLParser):
    """What a report page holds: its sections (id and heading), images, every tag and attribute, the text of
    each section and the tables' rows."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.sections: list[str] = []
        self.headings: list[str] = []
        self.images: list[dict[str, str]] = []
        self.tags: list[str] = []
        self.attributes: list[tuple[str, str]] = []
        self.text: dict[str, str] = {}
        self.rows: dict[str, list[list[str]]] = {}
        self.style = ""
        self._in: list[str] = []
        self.feed(text)
        self.close()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)
        self.attributes += [(name, value or "") for name, value in attrs]
        self._in.append(tag)
        found = dict(attrs)
        if tag == "section":
            self.sections.append(str(found["id"]))
        elif tag == "img":
            self.images.append({k: v or "" for k, v in found.items()})
            self._in.pop()  # a void element
        elif tag == "tr" and self.sections:
            self.rows.setdefault(self.sections[-1], []).append([])
        elif tag == "meta":
            self._in.pop()

    def handle_endtag(self, tag: str) -> None:
        if self._in and self._in[-1] == tag:
            self._in.pop()

    def handle_data(self, data: str) -> None:
        if "style" in self._in:
            self.style += data
        if "h2" in self._in:
            self.headings.append(data)
        if self.sections and "section" in self._in:
            section = self.sections[-1]
            self.text[section] = self.text.get(section, "") + data
            if {"td", "th"} & set(self._in) and self.rows.get(section):
                self.rows[section][-1].append(data)


def _pngs(run_dir: Path) -> list[Path]:
    return sorted(run_dir.glob("*.png")) + sorted((run_dir / "pictures").glob("*.png"))


def _embedded(page: _Page) -> list[bytes]:
    prefix = "data:image/png;base64,"
    assert all(image["src"].startswith(prefix) for image in page.images)
    return [base64.b64decode(image["src"][len(prefix) :], validate=True) for image in page.images]


def _self_contained(page: _Page) -> None:
    """Nothing the page refers to is outside it: no script, stylesheet link, frame or object; every href an
    anchor of the page, every src a data: URI, no url() in the style."""
    assert not {"script", "link", "iframe", "object", "embed", "base"} & set(page.tags)
    for name, value in page.attributes:
        assert "http:" not in value and "https:" not in value and not value.startswith("//"), (name, value[:80])
        if name == "href":
            assert value.startswith("#"), value
        if name == "src":
            assert value.startswith("data:image/png;base64,"), value[:80]
    assert "url(" not in page.style and "@import" not in page.style


def _copy_small(run_dir: Path, to: Path, *, pngs: bool) -> Path:
    to.mkdir()
    for name in _SMALL:
        shutil.copy(run_dir / name, to / name)
    for png in _pngs(run_dir) if pngs else []:
        shutil.copy(png, to / png.name)
    return to


def test_train_writes_a_report_with_every_section_and_every_png_embedded(run_dir):
    page = _Page((run_dir / "report.html").read_text(encoding="utf-8"))
    assert page.sections == [key for key, _ in SECTIONS]
    assert page.headings == [heading for _, heading in SECTIONS]
    _self_contained(page)
    pngs = _pngs(run_dir)
    assert {"loss.png", "lr.png", "confusion.png"} <= {p.name for p in pngs}  # matplotlib is in the test extra
    embedded = _embedded(page)
    assert sorted(embedded) == sorted(p.read_bytes() for p in pngs)  # every PNG once, byte for byte
    for data in embedded:
        with Image.open(io.BytesIO(data)) as image:
            image.load()  # decodes whole
            assert image.width > 100 and image.height > 100
    assert [image["alt"] for image in page.images][:2] == ["loss", "lr"]  # captions from the file names
    plan = (run_dir / "plan.txt").read_text()
    assert plan in page.text["plan"]  # the plan as written, escaped and read back
    history = json.loads((run_dir / "history.json").read_text())
    stage_rows = page.rows["stages"]
    assert stage_rows[0] == ["stage", "epochs", "seconds"] and stage_rows[1][:2] == ["unfrozen", "1"]
    assert len(stage_rows) == 2 + 1 + len(history)  # the stages table (its header, one stage), the history's rows
    assert "no curves" not in page.text["curves"] and "no plan.txt" not in page.text["plan"]
    per_class = run_dir / "per_class.csv"  # written by tasks with classes; shown whole, or named as missing
    if per_class.is_file():
        assert len(page.rows["per-class"]) == len(per_class.read_text().splitlines())
    else:
        assert "no per_class.csv" in page.text["per-class"] and "per_class.csv" in page.text["summary"]


def test_model_json_records_where_the_time_went_and_what_the_run_ran_on(run_dir):
    config = json.loads((run_dir / "model.json").read_text())
    timings, env = config["timings"], config["environment"]
    parts = ["startup", "data", "network", "plan", "fine_tune", "validation_report", "export", "plots", "stages"]
    assert list(timings) == parts
    assert all(timings[k] >= 0 for k in parts[1:-1]) and timings["startup"] > 0  # the process's age (in pytest)
    history = json.loads((run_dir / "history.json").read_text())
    assert timings["stages"] == [{"stage": "unfrozen", "epochs": 1, "seconds": round(history[0]["seconds"], 3)}]
    assert timings["fine_tune"] >= timings["stages"][0]["seconds"]
    assert {"torchgraft", "torch", "torchvision", "python", "system", "date"} <= set(env)
    assert env["device"] == "cpu" and env["world_size"] == 1
    import torch

    assert env["torch"] == torch.__version__.split("+")[0] or env["torch"] == torch.__version__
    page = _Page((run_dir / "report.html").read_text(encoding="utf-8"))
    assert "fine-tune" in page.text["timings"] and "stage unfrozen (1 epoch)" in page.text["timings"]
    assert ["processes (world size)", "1"] in page.rows["environment"]


def test_torchgraft_report_rebuilds_the_same_page(run_dir, capsys):
    written = (run_dir / "report.html").read_text(encoding="utf-8")
    (run_dir / "report.html").unlink()
    assert main(["report", str(run_dir)]) == 0
    assert capsys.readouterr().out.strip() == f"wrote {run_dir / 'report.html'}"
    assert (run_dir / "report.html").read_text(encoding="utf-8") == written  # from the folder's files alone


def test_a_folder_missing_pieces_gives_a_page_of_what_exists_saying_what_is_missing(run_dir, tmp_path):
    older = _copy_small(run_dir, tmp_path / "older", pngs=False)  # no plots (no matplotlib), no checkpoints
    config = json.loads((older / "model.json").read_text())
    del config["timings"], config["environment"]  # a run made before they were recorded
    (older / "model.json").write_text(json.dumps(config))
    (older / "history.csv").unlink()  # the history from history.json then
    assert main(["report", str(older), "--quiet"]) == 0
    page = _Page((older / "report.html").read_text(encoding="utf-8"))
    assert page.sections == [key for key, _ in SECTIONS] and page.images == []
    _self_contained(page)
    assert "matplotlib" in page.text["curves"] and "matplotlib" in page.text["pictures"]
    assert "no timings" in page.text["timings"] and "no environment" in page.text["environment"]
    assert "per_class.csv" in page.text["per-class"]
    summary = page.text["summary"]
    assert all(word in summary for word in ("Missing", "curves", "timings", "environment", "per_class.csv"))
    assert len(page.rows["stages"]) == 1 + len(json.loads((older / "history.json").read_text()))  # no stage table

    bare = tmp_path / "bare"  # a run killed before its first epoch: only the plan
    bare.mkdir()
    shutil.copy(run_dir / "plan.txt", bare / "plan.txt")
    assert main(["report", str(bare), "--quiet"]) == 0
    page = _Page((bare / "report.html").read_text(encoding="utf-8"))
    assert "model.json" in page.text["summary"] and "no history" in page.text["stages"]


def test_per_class_metrics_and_task_pictures_are_shown_and_escaped(run_dir, tmp_path):
    folder = _copy_small(run_dir, tmp_path / "run", pngs=True)
    classes = [*json.loads((folder / "model.json").read_text())["classes"], '<b>a "class" & more</b>']
    with (folder / "per_class.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["class", "support", "precision", "recall", "f1"])
        writer.writerows([name, 2 + i, 0.5, 0.25 * i, 0.125] for i, name in enumerate(classes))
    (folder / "pictures").mkdir()
    Image.new("RGB", (120, 80), (250, 10, 10)).save(folder / "pictures" / "worst_images.png")
    (folder / "pictures" / "notes.txt").write_text("not a picture")
    config = json.loads((folder / "model.json").read_text())
    config["timings"]["startup"] = None  # a run started from Python: its process was there before it
    (folder / "model.json").write_text(json.dumps(config))
    assert main(["report", str(folder), "--quiet"]) == 0
    text = (folder / "report.html").read_text(encoding="utf-8")
    page = _Page(text)
    _self_contained(page)
    assert "b" not in page.tags and "&lt;b&gt;a &quot;class&quot; &amp; more&lt;/b&gt;" in text
    rows = page.rows["per-class"]
    assert rows[0] == ["class", "support", "precision", "recall", "f1"] and [r[0] for r in rows[1:]] == classes
    assert rows[2][1:] == ["3", "0.5", "0.25", "0.125"]
    assert sorted(_embedded(page)) == sorted(p.read_bytes() for p in _pngs(folder))
    assert "worst images" in page.text["pictures"] and "pictures/worst_images.png" in page.text["pictures"]
    assert "confusion" in page.text["pictures"] and "loss" not in page.text["pictures"]
    assert "not part of the run (started from Python)" in page.text["timings"]


@pytest.mark.parametrize("kind", ["not a run", "no such folder"])
def test_report_of_a_folder_that_holds_no_run_is_one_line_and_exit_2(kind, tmp_path, capsys):
    folder = tmp_path / "photos"
    if kind == "not a run":
        folder.mkdir()
        (folder / "cat.jpg").write_bytes(b"\xff\xd8")
    assert main(["report", str(folder)]) == 2
    captured = capsys.readouterr()
    error = captured.err.strip()
    assert captured.out == "" and len(error.splitlines()) == 1, error
    assert error.startswith(f"torchgraft report: error: {folder}")
    assert ("is not a run folder" if kind == "not a run" else "no such folder") in error
    assert "torchgraft train" in error and not (folder / "report.html").exists()


@pytest.mark.slow
def test_the_report_renders_in_headless_chromium(run_dir, tmp_path):
    if not CHROMIUM.is_file():
        pytest.fail(f"{CHROMIUM} is missing: the report's rendering test needs it (apt-get install chromium)")
    width, height = 1280, 3200
    shot = tmp_path / "report.png"
    command = [
        str(CHROMIUM),
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--no-first-run",
        "--hide-scrollbars",
        f"--user-data-dir={tmp_path / 'profile'}",
        "--host-resolver-rules=MAP * ~NOTFOUND",  # nothing could be fetched even if the page asked
        f"--window-size={width},{height}",
        f"--screenshot={shot}",
        (run_dir / "report.html").resolve().as_uri(),
    ]
    result = subprocess.run(command, capture_output=True, text=True, timeout=180)
    assert result.returncode == 0 and shot.is_file(), result.stderr[-2000:]
    with Image.open(shot) as image:
        assert image.size == (width, height)
        pixels = image.convert("RGB")
    colours = pixels.getcolors(maxcolors=width * height)
    assert colours is not None and len(colours) > 200  # text, tables and the plots' colours, not a blank page
    white = sum(count for count, colour in colours if colour == (255, 255, 255))
    assert white < 0.97 * width * height
    # matplotlib's first line colour (C0, #1f77b4) is on the page only if an embedded plot was decoded and drawn
    blue = sum(count for count, (r, g, b) in colours if abs(r - 31) + abs(g - 119) + abs(b - 180) < 30)
    assert blue > 50, blue
