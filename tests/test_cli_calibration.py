"""``rankseg-np calibrate`` / ``evaluate`` / ``predict --temperature`` (issue 13, item 4).

Every number the commands print or write is compared with the library called
directly on the same arrays.
"""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from rankseg_np import evaluate, rankseg
from rankseg_np.calibration import TemperatureScaling
from rankseg_np.cli import main
from rankseg_np.data import synthetic_batch


def run(argv, capsys):
    capsys.readouterr()
    rc = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


@pytest.fixture()
def files(tmp_path):
    """Three validation files of an under-confident model (logits / 2.5) and their labels, by stem."""
    (tmp_path / "val").mkdir()
    (tmp_path / "lab").mkdir()
    logits, labels = [], []
    for i in range(3):
        p, y = synthetic_batch(batch=2, num_class=3, shape=(24, 24), scenario="small", seed=i)
        z = (np.log(p) / 2.5).astype(np.float32)
        np.save(tmp_path / "val" / f"case{i}.npy", z)
        np.save(tmp_path / "lab" / f"case{i}.npy", y)
        logits.append(z)
        labels.append(y)
    return tmp_path, logits, labels


def test_calibrate_writes_the_library_temperature(files, capsys):
    d, logits, labels = files
    rc, out, err = run(["calibrate", d / "val", "--labels", d / "lab", "-o", d / "t.json"], capsys)
    assert rc == 0, err
    record = json.loads((d / "t.json").read_text())
    ts = TemperatureScaling().fit(logits, labels)
    assert record["temperature"] == pytest.approx(ts.temperature_, rel=1e-12)
    assert record["inputs"] == "logits" and record["output_mode"] == "multiclass" and record["n_classes"] == 3
    assert record["written_by"] == "rankseg-np calibrate" and record["files"] == 3
    assert record["ece"] < record["ece_initial"] / 2
    assert f"temperature: {ts.temperature_:.4f}" in out
    assert [p.name for p in d.iterdir() if p.name.startswith(".")] == []  # no temporary left behind


def test_evaluate_prints_the_library_summary(files, capsys):
    d, logits, labels = files
    run(["calibrate", d / "val", "--labels", d / "lab", "-o", d / "t.json"], capsys)
    rc, out, err = run(["evaluate", d / "val", "--labels", d / "lab", "--temperature", d / "t.json"], capsys)
    assert rc == 0, err
    ts = TemperatureScaling().fit(logits, labels)
    report = evaluate(ts.transform(logits), labels)
    assert report.summary() in out
    rc, out, _ = run(["evaluate", d / "val", "--labels", d / "lab", "--inputs-are", "logits", "--metric", "iou",
                      "--empty", "ignore", "--no-background"], capsys)
    assert rc == 0
    identity = TemperatureScaling.from_dict({"temperature": 1.0, "n_classes": 3})
    assert evaluate(identity.transform(logits), labels, metric="iou", empty="ignore",
                    include_background=False).summary() in out


def test_evaluate_plot(files, capsys):
    pytest.importorskip("matplotlib")
    d, _logits, _labels = files
    rc, out, err = run(["evaluate", d / "val", "--labels", d / "lab", "--inputs-are", "logits", "--plot",
                        d / "gain.png"], capsys)
    assert rc == 0, err
    assert (d / "gain.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_predict_applies_the_temperature(files, capsys):
    d, logits, labels = files
    run(["calibrate", d / "val", "--labels", d / "lab", "-o", d / "t.json"], capsys)
    rc, _out, err = run(["predict", d / "val" / "case1.npy", "-o", d / "pred.npy", "--temperature", d / "t.json"],
                        capsys)
    assert rc == 0, err
    ts = TemperatureScaling().fit(logits, labels)
    np.testing.assert_array_equal(np.load(d / "pred.npy"), rankseg(ts.transform(logits[1])))


def test_png_labels_paired_by_stem(tmp_path, capsys):
    pil = pytest.importorskip("PIL.Image")
    (tmp_path / "val").mkdir()
    (tmp_path / "masks").mkdir()
    logits, labels = [], []
    for i in range(2):
        p, y = synthetic_batch(batch=1, num_class=3, shape=(20, 20), scenario="small", seed=10 + i)
        z = np.log(p[0]) / 2.0  # one image per file: (C, H, W)
        np.save(tmp_path / "val" / f"img{i}.npy", z)
        pil.fromarray(y[0].astype(np.uint8), mode="L").save(tmp_path / "masks" / f"img{i}.png")
        logits.append(z[None])
        labels.append(y)
    rc, out, err = run(["calibrate", tmp_path / "val", "--labels", tmp_path / "masks", "--no-batch-axis",
                        "-o", tmp_path / "t.json"], capsys)
    assert rc == 0, err
    expected = TemperatureScaling().fit(logits, labels).temperature_
    assert json.loads((tmp_path / "t.json").read_text())["temperature"] == pytest.approx(expected, rel=1e-12)
    # Without --no-batch-axis the PNG's (H, W) still pairs with (1, C, H, W) scores: size-1 axes are matched.
    np.save(tmp_path / "batched.npy", logits[0])
    rc, _out, err = run(["evaluate", tmp_path / "batched.npy", "--labels", tmp_path / "masks" / "img0.png",
                         "--inputs-are", "logits"], capsys)
    assert rc == 0, err
    # An RGB PNG is refused with one line naming the file.
    pil.fromarray(np.zeros((20, 20, 3), np.uint8), mode="RGB").save(tmp_path / "masks" / "img1.png")
    rc, _out, err = run(["calibrate", tmp_path / "val", "--labels", tmp_path / "masks", "--no-batch-axis",
                         "-o", tmp_path / "t2.json"], capsys)
    assert rc == 1 and "img1.png: is a RGB image" in err and err.count("\n") == 1
    assert not (tmp_path / "t2.json").exists()


def test_errors_are_one_line_and_write_nothing(files, capsys):
    d, _logits, labels = files
    os.remove(d / "lab" / "case2.npy")
    rc, _out, err = run(["calibrate", d / "val", "--labels", d / "lab", "-o", d / "t.json"], capsys)
    assert rc == 2 and "case2.npy: no label file named case2" in err
    np.save(d / "lab" / "case2.npy", labels[2] + 5)  # class ids out of range
    rc, _out, err = run(["calibrate", d / "val", "--labels", d / "lab", "-o", d / "t.json"], capsys)
    assert rc == 1 and "labels must hold class ids in [0, 3)" in err
    assert not (d / "t.json").exists()
    (d / "dir.json").mkdir()
    rc, _out, err = run(["calibrate", d / "val", "--labels", d / "lab", "-o", d / "dir.json"], capsys)
    assert rc == 2 and "refusing to replace it" in err
    (d / "bad.json").write_text('{"temperature": -1, "n_classes": 3}')
    rc, _out, err = run(["predict", d / "val" / "case0.npy", "-o", d / "p.npy", "--temperature", d / "bad.json"],
                        capsys)
    assert rc == 2 and "temperature must be a positive number" in err
    (d / "ml.json").write_text('{"temperature": 1.5, "n_classes": 3, "output_mode": "multilabel"}')
    rc, _out, err = run(["predict", d / "val" / "case0.npy", "-o", d / "p.npy", "--temperature", d / "ml.json"],
                        capsys)
    assert rc == 2 and "fitted for output_mode='multilabel'" in err
    rc, _out, err = run(["evaluate", d / "val", "--labels", d / "lab"], capsys)  # logits read as probabilities
    assert rc == 1 and "--inputs-are logits" in err
    rc, _out, err = run(["evaluate", d / "val", "--labels", d / "lab", "--inputs-are", "logits",
                         "--solvers", "RMA,foo"], capsys)
    assert rc == 2 and "solvers must name RankSEG solvers" in err
    for line in err.splitlines():
        assert "Traceback" not in line
