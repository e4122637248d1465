"""Text data from disk: CSV / JSON-lines rows and class folders of .txt files, the task inferred, bad rows
named by line or path, and the inputs told apart from images."""

from __future__ import annotations

import json

import pytest

from torchgraft.data.samples import DataError
from torchgraft.data.texts import looks_like_text, text_data


def _write(path, text: str):
    path.write_text(text, encoding="utf-8")
    return path


def test_csv_of_single_labels_with_a_split_column(tmp_path):
    table = _write(
        tmp_path / "t.csv",
        'text,label,split\n"Shares rose, then fell",business,train\nThe match ended 2-1,sport,train\n'
        "Profits doubled,business,valid\nA late goal,sport,valid\n",
    )
    data = text_data(table)
    assert data.task == "classify" and data.classes == ["business", "sport"]
    assert data.train == [("Shares rose, then fell", 0), ("The match ended 2-1", 1)]
    assert data.valid == [("Profits doubled", 0), ("A late goal", 1)]
    assert data.summary() == "text classify: 2 classes, 2 train / 2 valid texts"


def test_multilabel_rows_are_inferred_from_cells_and_json_lists(tmp_path):
    rows = [{"text": f"text {i}", "labels": ["a", "b"] if i % 3 == 0 else ["c"]} for i in range(20)]
    table = _write(tmp_path / "t.jsonl", "\n".join(json.dumps(r) for r in rows) + "\n")
    data = text_data(table, valid_pct=0.25)
    assert data.task == "multilabel" and data.task_reason == "some rows hold several labels"
    assert data.classes == ["a", "b", "c"] and len(data.train) == 15 and len(data.valid) == 5
    assert dict(data.train + data.valid)["text 3"] == (0, 1)


def test_regression_targets(tmp_path):
    lines = "".join(f"text {i},{i / 4}\n" for i in range(10))
    data = text_data(_write(tmp_path / "t.csv", "text,score\n" + lines))
    assert data.task == "regression" and data.classes == ["score"] and data.n_outputs == 1


def test_bad_rows_are_named_by_line_and_skip_bad_counts_them(tmp_path):
    table = _write(
        tmp_path / "t.csv",
        "text,label,split\nfine,a,train\n   ,a,train\nno label,,train\nother,b,train\nunseen,c,valid\nok,a,valid\n",
    )
    with pytest.raises(DataError) as error:
        text_data(table)
    message = str(error.value)
    assert "3 bad rows" in message and "line 3: empty text" in message and "line 4: empty label" in message
    assert "validation label(s) ['c'] have no training texts" in message and "skip_bad=True" in message
    data = text_data(table, skip_bad=True)
    assert len(data.bad_rows) == 3 and [t for t, _ in data.train] == ["fine", "other"]
    assert data.valid == [("ok", 0)]


def test_class_folders_of_txt_files_split_per_class(bbc_folder):
    data = text_data(bbc_folder, valid_pct=0.2, seed=0)
    assert data.classes == ["business", "entertainment", "politics", "sports", "tech"]
    assert len(data.train) == 5 * 24 and len(data.valid) == 5 * 6
    assert all(isinstance(text, str) and len(text) > 100 for text, _ in data.train)
    assert text_data(bbc_folder, valid_pct=0.2, seed=0).valid == data.valid  # the seed fixes the split


def test_train_and_valid_folders_and_an_empty_file_named_by_path(tmp_path):
    for split, texts in (("train", ["one", "two", ""]), ("valid", ["three"])):
        for label in ("x", "y"):
            (tmp_path / split / label).mkdir(parents=True)
            for i, text in enumerate(texts):
                _write(tmp_path / split / label / f"{i}.txt", text)
    with pytest.raises(DataError, match=r"2 bad rows: .*2\.txt: empty text"):
        text_data(tmp_path)
    data = text_data(tmp_path, skip_bad=True)
    assert len(data.train) == 4 and len(data.valid) == 2 and len(data.bad_rows) == 2


def test_task_errors_name_the_choices(tmp_path, bbc_folder):
    with pytest.raises(DataError, match="unknown task 'segment' for texts; choose from classify"):
        text_data(bbc_folder, task="segment")
    with pytest.raises(DataError, match="a folder of class folders is single-label"):
        text_data(bbc_folder, task="multilabel")
    with pytest.raises(FileNotFoundError, match="no such folder or CSV"):
        text_data(tmp_path / "missing.csv")


def test_texts_are_told_apart_from_images(tmp_path, bbc_folder):
    assert looks_like_text(bbc_folder)
    assert looks_like_text(_write(tmp_path / "a.csv", "text,label\nhello,x\n"))
    assert looks_like_text(_write(tmp_path / "b.csv", "Some words here,x\nMore words,y\n"))  # no header
    assert not looks_like_text(_write(tmp_path / "c.csv", "path,label\nimg/1.jpg,x\n"))
    assert not looks_like_text(_write(tmp_path / "d.csv", "img/1.png,x\nimg/2.png,y\n"))
    (tmp_path / "pics" / "cat").mkdir(parents=True)
    (tmp_path / "pics" / "cat" / "1.jpg").write_bytes(b"")
    assert not looks_like_text(tmp_path / "pics")


def test_bad_rows_of_a_multi_line_csv_are_named_by_file_line_in_file_order(tmp_path):
    article = '"First paragraph.\n\nSecond paragraph,\nwith a comma."'  # one record over 4 file lines
    rows = [f"{article},a", f"{article},b", f"{article},", f"{article},a", "   ,b", f"{article},", f"{article},b"]
    table = _write(tmp_path / "t.csv", "text,label\n" + "\n".join(rows) + "\n")
    # after the header, records of 4 lines: record 3 (no label) starts at line 10, the empty text is line
    # 18, record 6 (no label) starts at line 19; their record numbers would be 3, 5 and 6
    with pytest.raises(DataError) as error:
        text_data(table, valid_pct=0.0001)
    message = str(error.value)
    assert "3 bad rows: line 10: empty label; line 18: empty text; line 19: empty label" in message
    data = text_data(table, skip_bad=True, valid_pct=0.25)
    assert [row.split(":")[0] for row in data.bad_rows] == ["line 10", "line 18", "line 19"]
    assert ", 3 bad rows skipped" in data.summary()
