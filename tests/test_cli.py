"""The ``rankseg-np`` command line: predict reproduces the API, bad files fail cleanly, writes are atomic.

Most tests call :func:`rankseg_np.cli.main` in-process (fast, and an escaping
exception fails the test, which is how "no traceback" is checked there); a few
run the installed console script in a subprocess, as a user would.
"""

from __future__ import annotations

import io
import os
import pickle
import shutil
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rankseg_np import rankseg
from rankseg_np.cli import main
from rankseg_np.data import synthetic_batch



def softmax(x: np.ndarray) -> np.ndarray:
    z = np.exp(x - x.max(axis=1, keepdims=True))
    return z / z.sum(axis=1, keepdims=True)

# ---------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------


def run(argv, capsys):
    capsys.readouterr()
    rc = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


def probs_for(seed: int, shape=(2, 3, 12, 10), dtype=np.float32) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return softmax(2.5 * rng.standard_normal(shape)).astype(dtype)


def load_out(path) -> np.ndarray:
    """An output file: the array of a .npy, or the one member of a .npz."""
    loaded = np.load(path, allow_pickle=False)
    if isinstance(loaded, np.ndarray):
        return loaded
    with loaded:
        (name,) = loaded.files
        return loaded[name]


def error_lines(err: str) -> list[str]:
    return [line for line in err.splitlines() if ": error: " in line]


def assert_clean_errors(err: str, bad_names) -> None:
    """Each bad file is named on exactly one error line, and nothing looks like a traceback."""
    assert "Traceback" not in err
    lines = error_lines(err)
    for name in bad_names:
        hits = [line for line in lines if name in line.split(": error: ", 1)[1].split(": ", 1)[0]]
        assert len(hits) == 1, (name, err)


def no_temp_files(directory) -> bool:
    return not [e for e in os.listdir(directory) if e.endswith(".tmp") or e.endswith(".old")]


def script() -> list[str]:
    """The installed console script (next to this Python), else ``python -m``."""
    exe = shutil.which("rankseg-np", path=os.path.dirname(sys.executable))
    return [exe] if exe else [sys.executable, "-m", "rankseg_np.cli"]


# ---------------------------------------------------------------------------
# predict reproduces the API
# ---------------------------------------------------------------------------

# (CLI flags, the same call as API keyword arguments)
COMBOS = [
    ([], {}),
    (["--metric", "IoU"], {"metric": "iou"}),
    (["--output-mode", "multilabel"], {"output_mode": "multilabel"}),
    (["--metric", "iou", "--output-mode", "multilabel", "--smooth", "1.5"],
     {"metric": "iou", "output_mode": "multilabel", "smooth": 1.5}),
    (["--smooth", "0.7", "--pruning-prob", "0.2"], {"smooth": 0.7, "pruning_prob": 0.2}),
    (["--unassigned-policy", "void", "--void-index", "9", "--pruning-prob", "0.6"],
     {"unassigned_policy": "void", "void_index": 9, "pruning_prob": 0.6}),
    (["--unassigned-policy", "void"], {"unassigned_policy": "void"}),
    (["--metric", "acc", "--solver", "argmax"], {"metric": "acc", "solver": "argmax"}),
    (["--metric", "accuracy", "--output-mode", "multilabel", "--solver", "tr"],
     {"metric": "accuracy", "output_mode": "multilabel", "solver": "TR"}),
]


@pytest.mark.parametrize("flags, kwargs", COMBOS)
@pytest.mark.parametrize("fmt", ["npy", "npz"])
def test_predict_reproduces_api(tmp_path, capsys, flags, kwargs, fmt):
    probs = probs_for(len(flags) + 7 * len(kwargs))
    src = tmp_path / f"in.{fmt}"
    if fmt == "npy":
        np.save(src, probs)
    else:
        np.savez(src, probs=probs)
    dst = tmp_path / f"out.{fmt}"
    rc, _, err = run(["predict", src, "-o", dst, "--quiet", *flags], capsys)
    assert rc == 0, err
    expected = rankseg(probs, **kwargs)
    if fmt == "npy":
        got = np.load(dst, allow_pickle=False)
    else:
        with np.load(dst, allow_pickle=False) as z:
            assert z.files == ["masks" if kwargs.get("output_mode") == "multilabel" else "labels"]
            got = z[z.files[0]]
    assert got.dtype == expected.dtype and got.shape == expected.shape
    np.testing.assert_array_equal(got, expected)
    assert no_temp_files(tmp_path)


@settings(max_examples=25)
@given(
    seed=st.integers(0, 2**31 - 1),
    shape=st.sampled_from([(1, 2, 7), (2, 3, 5, 6), (1, 4, 3, 4, 5), (3, 1, 9, 4)]),
    dtype=st.sampled_from(["float16", "float32", "float64"]),
    metric=st.sampled_from(["dice", "iou"]),
    smooth=st.sampled_from([0.0, 0.5, 3.0]),
    pruning=st.sampled_from([0.0, 0.3, 0.5, 0.9]),
    fortran=st.booleans(),
)
def test_predict_matches_api_on_random_files(tmp_path_factory, seed, shape, dtype, metric, smooth, pruning, fortran):
    tmp = tmp_path_factory.mktemp("prop")
    probs = probs_for(seed, shape, dtype)
    if fortran:  # np.save keeps Fortran order; the CLI reads it memory-mapped
        probs = np.asfortranarray(probs)
    mode = "multilabel" if shape[1] == 1 else "multiclass"
    np.save(tmp / "p.npy", probs)
    argv = ["predict", tmp / "p.npy", "-o", tmp / "o.npy", "-q", "--metric", metric,
            "--smooth", repr(smooth), "--pruning-prob", repr(pruning), "--output-mode", mode]
    assert main([str(a) for a in argv]) == 0
    expected = rankseg(probs, metric=metric, smooth=smooth, pruning_prob=pruning, output_mode=mode)
    np.testing.assert_array_equal(np.load(tmp / "o.npy"), expected)


def test_npz_key_selection(tmp_path, capsys):
    a, b = probs_for(1), probs_for(2, (1, 4, 6, 6))
    np.savez(tmp_path / "two.npz", probs=a, extra=b)
    np.savez(tmp_path / "other.npz", x=a, y=b)
    np.savez(tmp_path / "single.npz", logits_softmaxed=b)
    rc, _, err = run(["predict", tmp_path / "two.npz", "-o", tmp_path / "o1.npy"], capsys)
    assert rc == 0, err
    np.testing.assert_array_equal(np.load(tmp_path / "o1.npy"), rankseg(a))
    rc, _, err = run(["predict", tmp_path / "two.npz", "--key", "extra", "-o", tmp_path / "o2.npy"], capsys)
    assert rc == 0, err
    np.testing.assert_array_equal(np.load(tmp_path / "o2.npy"), rankseg(b))
    rc, _, err = run(["predict", tmp_path / "single.npz", "-o", tmp_path / "o3.npy"], capsys)
    assert rc == 0, err
    np.testing.assert_array_equal(np.load(tmp_path / "o3.npy"), rankseg(b))
    # ambiguous archive, and a key that is not there: one line each, naming the file and the choices
    rc, _, err = run(["predict", tmp_path / "other.npz", "-o", tmp_path / "o4.npy"], capsys)
    assert rc == 1 and "--key" in err and "x, y" in err
    assert_clean_errors(err, ["other.npz"])
    rc, _, err = run(["predict", tmp_path / "two.npz", "--key", "nope", "-o", tmp_path / "o5.npy"], capsys)
    assert rc == 1 and "'nope'" in err and "extra" in err
    assert not (tmp_path / "o4.npy").exists() and not (tmp_path / "o5.npy").exists()


def test_big_endian_and_empty_batch_files(tmp_path, capsys):
    probs = probs_for(6)
    np.save(tmp_path / "be.npy", probs.astype(">f4"))
    np.savez(tmp_path / "be.npz", probs=probs.astype(">f8"))
    for name in ("be.npy", "be.npz"):
        rc, _, err = run(["predict", tmp_path / name, "-o", tmp_path / "o.npy"], capsys)
        assert rc == 0, err
        np.testing.assert_array_equal(np.load(tmp_path / "o.npy"), rankseg(probs))
    empty = np.zeros((0, 3, 4, 4), np.float32)
    np.save(tmp_path / "empty.npy", empty)
    rc, _, err = run(["predict", tmp_path / "empty.npy", "-o", tmp_path / "o.npy"], capsys)
    assert rc == 0, err
    got = np.load(tmp_path / "o.npy")
    assert got.shape == rankseg(empty).shape == (0, 4, 4)


def test_no_batch_axis(tmp_path, capsys):
    probs = probs_for(3, (1, 3, 8, 9))
    np.save(tmp_path / "img.npy", probs[0])
    rc, _, err = run(["predict", tmp_path / "img.npy", "-o", tmp_path / "lab.npy", "--no-batch-axis"], capsys)
    assert rc == 0, err
    np.testing.assert_array_equal(np.load(tmp_path / "lab.npy"), rankseg(probs)[0])


# ---------------------------------------------------------------------------
# several inputs: directories and globs
# ---------------------------------------------------------------------------


def test_directory_and_glob_inputs(tmp_path, capsys):
    src = tmp_path / "in"
    src.mkdir()
    arrays = {f"img{i}": probs_for(10 + i, (1, 3, 6 + i, 5)) for i in range(3)}
    for name, arr in arrays.items():
        if name == "img1":
            np.savez(src / f"{name}.npz", probs=arr)
        else:
            np.save(src / f"{name}.npy", arr)
    (src / "notes.txt").write_text("not an input")
    (src / "sub").mkdir()  # not recursed into

    rc, _, err = run(["predict", src, "-o", tmp_path / "out_dir"], capsys)
    assert rc == 0, err
    outs = sorted(os.listdir(tmp_path / "out_dir"))
    assert outs == ["img0.npy", "img1.npz", "img2.npy"]  # the input's format by default
    for name, arr in arrays.items():
        path = tmp_path / "out_dir" / (name + (".npz" if name == "img1" else ".npy"))
        np.testing.assert_array_equal(load_out(path), rankseg(arr))

    rc, _, err = run(["predict", str(src / "img[02].np*"), "-o", tmp_path / "out_glob", "--format", "npy",
                      "--metric", "iou"], capsys)
    assert rc == 0, err
    assert sorted(os.listdir(tmp_path / "out_glob")) == ["img0.npy", "img2.npy"]
    for name in ("img0", "img2"):
        np.testing.assert_array_equal(np.load(tmp_path / "out_glob" / f"{name}.npy"),
                                      rankseg(arrays[name], metric="iou"))
    assert no_temp_files(tmp_path / "out_dir") and no_temp_files(tmp_path / "out_glob")

    # a pattern that matches nothing is a failure, named, and does not stop the others
    rc, _, err = run(["predict", str(src / "zzz*.npy"), src / "img0.npy", "-o", tmp_path / "out3"], capsys)
    assert rc == 1 and os.listdir(tmp_path / "out3") == ["img0.npy"]
    assert_clean_errors(err, ["zzz*.npy"])


def test_one_input_into_existing_directory(tmp_path, capsys):
    probs = probs_for(4)
    np.save(tmp_path / "a.npy", probs)
    (tmp_path / "o").mkdir()
    rc, _, err = run(["predict", tmp_path / "a.npy", "-o", tmp_path / "o"], capsys)
    assert rc == 0, err
    np.testing.assert_array_equal(np.load(tmp_path / "o" / "a.npy"), rankseg(probs))


def test_colliding_output_names_are_refused(tmp_path, capsys):
    for d in ("x", "y"):
        (tmp_path / d).mkdir()
        np.save(tmp_path / d / "same.npy", probs_for(5))
    rc, _, err = run(["predict", tmp_path / "x" / "same.npy", tmp_path / "y" / "same.npy", "-o", tmp_path / "o"],
                     capsys)
    assert rc == 2 and "same.npy" in err and len(err.strip().splitlines()) == 1


# ---------------------------------------------------------------------------
# bad inputs: one line each, non-zero exit, the others still processed
# ---------------------------------------------------------------------------


def make_bad_files(d) -> dict[str, str]:
    """name -> a word the error message must contain."""
    rng = np.random.default_rng(0)
    (d / "corrupt.npy").write_bytes(rng.bytes(300))
    (d / "corrupt.npz").write_bytes(b"PK\x03\x04" + rng.bytes(300))
    np.save(d / "objects.npy", np.array([{"evil": 1}, None], dtype=object), allow_pickle=True)
    np.savez(d / "objects.npz", probs=np.array([None, 1.0], dtype=object))
    with open(d / "pickle.npy", "wb") as f:
        pickle.dump(probs_for(0), f)
    np.save(d / "wrongshape.npy", probs_for(0)[0, 0])
    np.save(d / "ints.npy", np.ones((1, 2, 3, 3), dtype=np.int32))
    np.save(d / "outofrange.npy", 2.0 * probs_for(0))
    np.save(d / "truncated.npy", probs_for(0))
    with open(d / "truncated.npy", "r+b") as f:
        f.truncate(200)
    (d / "empty.npy").write_bytes(b"")
    return {
        "corrupt.npy": "not a .npy",
        "corrupt.npz": "npz",
        "objects.npy": "pickle",
        "objects.npz": "pickle",
        "pickle.npy": "pickle",
        "wrongshape.npy": "shape",
        "ints.npy": "dtype",
        "outofrange.npy": "[0, 1]",
        "truncated.npy": "truncated",
        "empty.npy": "empty",
    }


def test_bad_files_fail_alone(tmp_path, capsys):
    src = tmp_path / "in"
    src.mkdir()
    bad = make_bad_files(src)
    good = {"good_a": probs_for(21), "good_b": probs_for(22, (2, 2, 5, 5))}
    for name, arr in good.items():
        np.save(src / f"{name}.npy", arr)
    out = tmp_path / "out"
    rc, _, err = run(["predict", src, tmp_path / "missing.npy", "-o", out], capsys)
    assert rc == 1
    assert_clean_errors(err, list(bad) + ["missing.npy"])
    assert len(error_lines(err)) == len(bad) + 1
    for name, word in bad.items():
        (line,) = [ln for ln in error_lines(err) if f"{name}:" in ln]
        assert word in line.lower(), line
    assert "no such file" in err
    # the summary names every failure; the good files were written and are right
    assert "2 written" in err and f"{len(bad) + 1} failed" in err
    assert sorted(os.listdir(out)) == ["good_a.npy", "good_b.npy"]
    for name, arr in good.items():
        np.testing.assert_array_equal(np.load(out / f"{name}.npy"), rankseg(arr))
    assert no_temp_files(out)


@pytest.mark.parametrize("name", ["corrupt.npy", "objects.npy", "objects.npz", "pickle.npy", "wrongshape.npy"])
def test_single_bad_file(tmp_path, capsys, name):
    make_bad_files(tmp_path)
    rc, out, err = run(["predict", tmp_path / name, "-o", tmp_path / "o.npy"], capsys)
    assert rc == 1 and out == ""
    assert len(err.strip().splitlines()) == 1 and name in err
    assert not (tmp_path / "o.npy").exists() and no_temp_files(tmp_path)


def test_pickled_payload_is_never_executed(tmp_path, capsys):
    """An object array whose pickle would run code if unpickled: refused, and the code never runs."""
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    arr = np.empty(1, dtype=object)
    arr[0] = Evil()
    np.save(tmp_path / "evil.npy", arr, allow_pickle=True)
    np.savez(tmp_path / "evil.npz", probs=arr)
    with open(tmp_path / "raw.npy", "wb") as f:
        pickle.dump(Evil(), f)
    for name in ("evil.npy", "evil.npz", "raw.npy"):
        rc, _, err = run(["predict", tmp_path / name, "-o", tmp_path / "o.npy"], capsys)
        assert rc == 1 and "pickle" in err and name in err
    assert not marker.exists()


def test_keep_going_off_stops_at_first_failure(tmp_path, capsys):
    src = tmp_path / "in"
    src.mkdir()
    (src / "a_bad.npy").write_bytes(b"garbage")
    np.save(src / "b_good.npy", probs_for(1))
    rc, _, err = run(["predict", src, "-o", tmp_path / "o", "--no-keep-going"], capsys)
    assert rc == 1 and not (tmp_path / "o" / "b_good.npy").exists()
    assert "not attempted" in err
    rc, _, err = run(["predict", src, "-o", tmp_path / "o"], capsys)
    assert rc == 1 and (tmp_path / "o" / "b_good.npy").exists()


# ---------------------------------------------------------------------------
# bad arguments: the library's message, exit status 2
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "flags, kwargs",
    [
        (["--metric", "foo"], {"metric": "foo"}),
        (["--output-mode", "both"], {"output_mode": "both"}),
        (["--solver", "magic"], {"solver": "magic"}),
        (["--smooth", "-1"], {"smooth": -1.0}),
        (["--pruning-prob", "1.5"], {"pruning_prob": 1.5}),
        (["--void-index", "7"], {"void_index": 7}),
        (["--unassigned-policy", "nearest"], {"unassigned_policy": "nearest"}),
        (["--eps", "0.01"], {"eps": 0.01}),
    ],
)
def test_bad_api_arguments_exit_2(tmp_path, capsys, flags, kwargs):
    probs = probs_for(0)
    np.save(tmp_path / "p.npy", probs)
    with pytest.raises((ValueError, TypeError)) as info:
        rankseg(probs, **kwargs)
    rc, out, err = run(["predict", tmp_path / "p.npy", "-o", tmp_path / "o.npy", *flags], capsys)
    assert rc == 2 and out == ""
    assert err.strip().splitlines() == [f"rankseg-np predict: error: {info.value}"]
    assert not (tmp_path / "o.npy").exists()


@pytest.mark.parametrize("void", [0, 1, 3, 4])
def test_void_index_inside_class_range(tmp_path, capsys, void):
    """0 and 1 are labels for every input (exit 2); larger values depend on the file's class count."""
    probs = probs_for(0, (1, 4, 5, 5))
    np.save(tmp_path / "p.npy", probs)
    rc, _, err = run(["predict", tmp_path / "p.npy", "-o", tmp_path / "o.npy", "--unassigned-policy", "void",
                      "--void-index", void], capsys)
    if void < 4:
        assert len(err.strip().splitlines()) == 1 and "void_index" in err
    if void < 2:
        assert rc == 2
    elif void < 4:
        with pytest.raises(ValueError) as info:
            rankseg(probs, unassigned_policy="void", void_index=void)
        assert rc == 1 and err.strip() == f"rankseg-np predict: error: {tmp_path / 'p.npy'}: {info.value}"
    else:
        assert rc == 0
        np.testing.assert_array_equal(np.load(tmp_path / "o.npy"), rankseg(probs, unassigned_policy="void", void_index=4))


def test_usage_errors_exit_2(tmp_path, capsys):
    np.save(tmp_path / "p.npy", probs_for(0))
    assert run(["predict", tmp_path / "p.npy"], capsys)[0] == 2  # -o missing (argparse)
    assert run(["predict", tmp_path / "p.npy", "-o", tmp_path / "o.npy", "--smooth", "abc"], capsys)[0] == 2
    assert run(["predict", tmp_path / "p.npy", "-o", tmp_path / "nodir" / "o.npy"], capsys)[0] == 2
    assert run(["predict", tmp_path / "p.npy", "-o", tmp_path / "p.npy"], capsys)[0] == 2  # would clobber input
    assert run(["predict", tmp_path / "p.npy", "-o", tmp_path / "o.npy", "--dtype", "bool"], capsys)[0] == 2
    assert run(["predict", tmp_path / "p.npy", "-o", tmp_path / "o.npy", "--chunks", "0"], capsys)[0] == 2
    assert run([], capsys)[0] == 2
    assert not (tmp_path / "o.npy").exists()


# ---------------------------------------------------------------------------
# output dtype
# ---------------------------------------------------------------------------


def test_output_dtypes(tmp_path, capsys):
    probs = probs_for(8, (2, 5, 9, 9))
    np.save(tmp_path / "p.npy", probs)
    ref = rankseg(probs)

    def predict(*flags):
        rc, _, err = run(["predict", tmp_path / "p.npy", "-o", tmp_path / "o.npy", *flags], capsys)
        return rc, err, (np.load(tmp_path / "o.npy") if rc == 0 else None)

    for name in ("uint8", "int16", "int32", "uint64"):
        rc, err, got = predict("--dtype", name)
        assert rc == 0 and got.dtype == np.dtype(name), err
        np.testing.assert_array_equal(got, ref)
    rc, _, got = predict("--dtype", "auto")
    assert got.dtype == np.uint8
    # void labels must fit too, known from the arguments alone (no data scan)
    void = ["--unassigned-policy", "void", "--void-index"]
    rc, _, got = predict("--dtype", "auto", *void, "-1")
    assert got.dtype == np.int8
    np.testing.assert_array_equal(got, rankseg(probs, unassigned_policy="void", void_index=-1))
    rc, _, got = predict("--dtype", "auto", *void, "300")
    assert got.dtype == np.uint16
    rc, err, _ = predict("--dtype", "uint8", *void, "300")
    assert rc == 1 and "uint8" in err and "p.npy" in err and len(err.strip().splitlines()) == 1
    rc, err, _ = predict("--dtype", "uint8", *void, "-1")
    assert rc == 1 and "uint8" in err
    # multilabel masks: bool by default, 0/1 integers on request
    rc, _, got = predict("--output-mode", "multilabel")
    assert got.dtype == np.bool_
    rc, _, got8 = predict("--output-mode", "multilabel", "--dtype", "uint8")
    assert got8.dtype == np.uint8
    np.testing.assert_array_equal(got8, got.astype(np.uint8))


def test_int8_overflow_with_many_classes(tmp_path, capsys):
    probs = probs_for(9, (1, 130, 2, 3))
    np.save(tmp_path / "p.npy", probs)
    rc, _, err = run(["predict", tmp_path / "p.npy", "-o", tmp_path / "o.npy", "--dtype", "int8"], capsys)
    assert rc == 1 and "130 classes" in err and "int8" in err
    rc, _, err = run(["predict", tmp_path / "p.npy", "-o", tmp_path / "o.npy", "--dtype", "uint8"], capsys)
    assert rc == 0, err
    np.testing.assert_array_equal(np.load(tmp_path / "o.npy"), rankseg(probs))


# ---------------------------------------------------------------------------
# atomic writes
# ---------------------------------------------------------------------------


def test_existing_output_replaced_only_on_success(tmp_path, capsys):
    good, bad = tmp_path / "good.npy", tmp_path / "bad.npy"
    probs = probs_for(31)
    np.save(good, probs)
    bad.write_bytes(b"\x93NUMPY garbage header")
    dst = tmp_path / "out.npy"
    sentinel = np.arange(5)
    np.save(dst, sentinel)
    rc, _, _ = run(["predict", bad, "-o", dst], capsys)
    assert rc == 1
    np.testing.assert_array_equal(np.load(dst), sentinel)
    rc, _, _ = run(["predict", good, "-o", dst], capsys)
    assert rc == 0
    np.testing.assert_array_equal(np.load(dst), rankseg(probs))
    assert no_temp_files(tmp_path)
    # a fresh output gets the permissions of an ordinary new file, not mkstemp's 0600
    mask = os.umask(0)
    os.umask(mask)
    assert (os.stat(dst).st_mode & 0o777) == (0o666 & ~mask)


@pytest.mark.parametrize("fmt", ["npy", "npz"])
@pytest.mark.parametrize("exc", [KeyboardInterrupt, OSError])
def test_interrupted_write_leaves_old_output(tmp_path, capsys, monkeypatch, fmt, exc):
    """Kill the write half-way (Ctrl-C or a full disk): the old output survives, no temp file remains."""
    probs = probs_for(32)
    np.save(tmp_path / "in.npy", probs)
    dst = tmp_path / f"out.{fmt}"
    dst.write_bytes(b"previous result")
    real = np.save if fmt == "npy" else np.savez_compressed

    def half_write(f, *args, **kwargs):
        f.write(b"\x93NUMPY partial")
        raise exc("interrupted mid-write")

    monkeypatch.setattr(np, "save" if fmt == "npy" else "savez_compressed", half_write)
    rc, _, err = run(["predict", tmp_path / "in.npy", "-o", dst], capsys)
    assert rc == (130 if exc is KeyboardInterrupt else 1)
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert dst.read_bytes() == b"previous result"
    assert sorted(os.listdir(tmp_path)) == ["in.npy", dst.name]
    monkeypatch.setattr(np, "save" if fmt == "npy" else "savez_compressed", real)
    assert run(["predict", tmp_path / "in.npy", "-o", dst], capsys)[0] == 0


def test_sigterm_cleans_up(tmp_path, capsys, monkeypatch):
    """A scheduler's SIGTERM mid-write: exit 143, old output intact, temporary file removed."""
    import signal

    np.save(tmp_path / "in.npy", probs_for(33))
    dst = tmp_path / "out.npy"
    dst.write_bytes(b"previous result")

    def terminated_write(f, *args, **kwargs):
        f.write(b"\x93NUMPY partial")
        os.kill(os.getpid(), signal.SIGTERM)
        for _ in range(1000):  # the Python-level handler runs between bytecodes
            pass
        raise AssertionError("SIGTERM handler did not run")

    monkeypatch.setattr(np, "save", terminated_write)
    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(SystemExit) as info:
        main(["predict", str(tmp_path / "in.npy"), "-o", str(dst)])
    assert info.value.code == 128 + signal.SIGTERM
    assert dst.read_bytes() == b"previous result"
    assert sorted(os.listdir(tmp_path)) == ["in.npy", "out.npy"]
    assert signal.getsignal(signal.SIGTERM) is before  # the CLI's handler is not left behind


def test_trailing_separator_means_directory(tmp_path, capsys):
    np.save(tmp_path / "a.npy", probs_for(34))
    rc, _, err = run(["predict", tmp_path / "a.npy", "-o", str(tmp_path / "res") + os.sep], capsys)
    assert rc == 0, err
    np.testing.assert_array_equal(np.load(tmp_path / "res" / "a.npy"), rankseg(probs_for(34)))


def test_skip_existing_resumes(tmp_path, capsys):
    src = tmp_path / "in"
    src.mkdir()
    for i in range(2):
        np.save(src / f"f{i}.npy", probs_for(40 + i))
    out = tmp_path / "out"
    out.mkdir()
    np.save(out / "f0.npy", np.zeros(1))  # pretend f0 was finished by an earlier run
    rc, _, err = run(["predict", src, "-o", out, "--skip-existing"], capsys)
    assert rc == 0 and "1 skipped" in err
    np.testing.assert_array_equal(np.load(out / "f0.npy"), np.zeros(1))
    np.testing.assert_array_equal(np.load(out / "f1.npy"), rankseg(probs_for(41)))


# ---------------------------------------------------------------------------
# progress bar and warnings
# ---------------------------------------------------------------------------


class FakeTTY(io.StringIO):
    def isatty(self):
        return True


@pytest.mark.parametrize("quiet", [False, True])
def test_progress_bar_only_on_a_tty(tmp_path, monkeypatch, quiet):
    src = tmp_path / "in"
    src.mkdir()
    for i in range(3):
        np.save(src / f"f{i}.npy", probs_for(50 + i))
    tty = FakeTTY()
    monkeypatch.setattr(sys, "stderr", tty)
    argv = ["predict", str(src), "-o", str(tmp_path / "o")] + (["-q"] if quiet else [])
    assert main(argv) == 0
    text = tty.getvalue()
    if quiet:
        assert text == ""
    else:
        assert "\r" in text and "3/3" in text and "3 written" in text
    # not a TTY (a log file, a pipe): no carriage returns at all
    plain = io.StringIO()
    monkeypatch.setattr(sys, "stderr", plain)
    assert main(argv) == 0
    assert "\r" not in plain.getvalue()


def test_library_warnings_are_one_line(tmp_path, capsys):
    np.save(tmp_path / "p.npy", probs_for(60))
    rc, _, err = run(["predict", tmp_path / "p.npy", "-o", tmp_path / "o.npy", "--metric", "acc",
                      "--output-mode", "multilabel", "--solver", "argmax"], capsys)
    assert rc == 0
    assert err.strip().splitlines() and all(line.startswith("rankseg-np: warning:") for line in err.strip().splitlines())


# ---------------------------------------------------------------------------
# demo, bench, version
# ---------------------------------------------------------------------------


def _mean_scores(pred_masks: np.ndarray, truth_masks: np.ndarray) -> tuple[float, float]:
    """Independent Dice/IoU (written out here, not the package's metrics): mean over (image, class)."""
    axes = tuple(range(2, pred_masks.ndim))
    inter = (pred_masks & truth_masks).sum(axis=axes).astype(float)
    p, t = pred_masks.sum(axis=axes), truth_masks.sum(axis=axes)
    dice = [2 * i / (a + b) if a + b else 0.0 for i, a, b in zip(inter.ravel(), p.ravel(), t.ravel())]
    iou = [i / (a + b - i) if a + b - i else 0.0 for i, a, b in zip(inter.ravel(), p.ravel(), t.ravel())]
    return float(np.mean(dice)), float(np.mean(iou))


def _table(out: str) -> dict[str, tuple[float, float]]:
    rows = {}
    for line in out.splitlines():
        parts = line.rsplit(None, 4)
        if len(parts) == 5 and (parts[0].startswith(("argmax", "threshold", "RankSEG"))):
            try:
                dice, iou, _ms, _ratio = map(float, parts[1:])
            except ValueError:  # prose, not a table row
                continue
            rows[parts[0]] = (dice, iou)
    return rows


def test_demo_in_process(capsys):
    rc, out, err = run(["demo", "--batch", "2", "--classes", "3", "--size", "24", "--seed", "3", "--repeat", "1",
                        "--no-exact"], capsys)
    assert rc == 0, err
    rows = _table(out)
    assert set(rows) == {"argmax", "RankSEG RMA dice", "RankSEG RMA iou"}
    probs, truth = synthetic_batch(2, 3, (24, 24), "mixed", seed=3)
    classes = np.arange(3)[None, :, None, None]
    truth_m = truth[:, None] == classes
    for name, pred in [("argmax", probs.argmax(1)), ("RankSEG RMA dice", rankseg(probs)),
                       ("RankSEG RMA iou", rankseg(probs, metric="iou"))]:
        dice, iou = _mean_scores(pred[:, None] == classes, truth_m)
        assert rows[name] == pytest.approx((dice, iou), abs=6e-5), name
    assert "mean Dice" in out and "mean IoU" in out and "background included" in out


def test_demo_exact_rows_when_available(capsys):
    pytest.importorskip("rankseg_np.cpu.exact")
    rc, out, err = run(["demo", "--batch", "1", "--classes", "3", "--size", "12", "--metric", "dice", "--repeat", "1"],
                       capsys)
    assert rc == 0 and "skipped" not in err, err
    rows = _table(out)
    assert set(rows) == {"argmax", "RankSEG RMA dice", "RankSEG exact dice"}
    probs, truth = synthetic_batch(1, 3, (12, 12), "mixed", seed=0)
    classes = np.arange(3)[None, :, None, None]
    pred = rankseg(probs, solver="exact")
    assert rows["RankSEG exact dice"] == pytest.approx(
        _mean_scores(pred[:, None] == classes, truth[:, None] == classes), abs=6e-5)


def test_demo_multilabel_one_metric(capsys):
    rc, out, err = run(["demo", "--output-mode", "multilabel", "--metric", "iou", "--batch", "1", "--classes", "2",
                        "--size", "20", "--scenario", "small", "--repeat", "1", "--no-exact"], capsys)
    assert rc == 0, err
    rows = _table(out)
    assert set(rows) == {"threshold p > 0.5", "RankSEG RMA iou"}
    probs, truth = synthetic_batch(1, 2, (20, 20), "small", output_mode="multilabel", seed=0)
    assert rows["RankSEG RMA iou"] == pytest.approx(
        _mean_scores(rankseg(probs, metric="iou", output_mode="multilabel"), truth), abs=6e-5)


def test_demo_bad_arguments(capsys):
    assert run(["demo", "--scenario", "huge"], capsys)[0] == 2
    assert run(["demo", "--classes", "1"], capsys)[0] == 2
    assert run(["demo", "--size", "0"], capsys)[0] == 2


def test_bench_prints_ratios(capsys):
    rc, out, err = run(["bench", "--batch", "1", "--classes", "3", "--size", "16", "--repeat", "1"], capsys)
    assert rc == 0, err
    for case in ("one-pass argmax", "np.argmax", "RMA dice multiclass", "RMA iou multiclass", "RMA dice multilabel",
                 "RMA iou multilabel"):
        (line,) = [ln for ln in out.splitlines() if ln.startswith(case)]
        ms, vs_once, vs_np, gbs = (float(x) for x in line.split()[-4:])
        # (on this tiny input a time may print as 0.00 ms, and a rate as 0.00 GB/s)
        assert min(ms, vs_once, vs_np, gbs) >= 0 and (ms > 0 or gbs > 0)
        if case == "one-pass argmax":
            assert vs_once == 1.0


def test_bench_yardstick_keeps_its_best_over_the_table(monkeypatch):
    """best_times re-times the yardstick after every other case and keeps its smallest time."""
    from rankseg_np.cli import _baseline

    # The yardstick's best (0.3) is neither its first time nor its last: keeping either fails.
    scripted = {"yard": iter([0.5, 0.3, 0.4, 0.35]), "a": iter([1.0]), "b": iter([2.0]), "c": iter([3.0])}
    calls = []

    def fake_best_time(fn, repeat):
        calls.append((fn(), repeat))
        return next(scripted[fn()])

    monkeypatch.setattr(_baseline, "best_time", fake_best_time)
    cases = [(name, lambda name=name: name) for name in ("yard", "a", "b", "c")]
    times = _baseline.best_times(cases, lambda name: 7 if name == "yard" else 3, "yard")
    assert times == {"yard": 0.3, "a": 1.0, "b": 2.0, "c": 3.0}
    assert calls == [("yard", 7), ("a", 3), ("yard", 7), ("b", 3), ("yard", 7), ("c", 3), ("yard", 7)]


def test_version_and_demo_as_subprocesses(tmp_path):
    from rankseg_np import __version__

    proc = subprocess.run(script() + ["--version"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and proc.stdout.strip() == f"rankseg-np {__version__}"
    proc = subprocess.run(script() + ["demo", "--batch", "1", "--classes", "3", "--size", "16", "--repeat", "1",
                                      "--no-exact"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert {"argmax", "RankSEG RMA dice", "RankSEG RMA iou"} <= set(_table(proc.stdout))
    # a real process, a corrupt file among good ones: one line, no traceback, good file written
    (tmp_path / "bad.npy").write_bytes(os.urandom(64))
    np.save(tmp_path / "good.npy", probs_for(70))
    proc = subprocess.run(script() + ["predict", tmp_path / "bad.npy", tmp_path / "good.npy", "-o", tmp_path / "o"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert len(error_lines(proc.stderr)) == 1 and "bad.npy" in error_lines(proc.stderr)[0]
    np.testing.assert_array_equal(np.load(tmp_path / "o" / "good.npy"), rankseg(probs_for(70)))


# ---------------------------------------------------------------------------
# Dask / Zarr (optional)
# ---------------------------------------------------------------------------


def _dask_ready():
    pytest.importorskip("dask.array")
    pytest.importorskip("rankseg_np.dask")


@pytest.mark.parametrize("chunks", ["auto", "1", "1,-1,5,4", "-1,2,-1,-1"])
def test_chunks_through_dask_match_in_memory(tmp_path, capsys, chunks):
    _dask_ready()
    probs = probs_for(80, (2, 3, 10, 8))
    np.save(tmp_path / "p.npy", probs)
    for fmt in ("npy", "npz"):
        rc, _, err = run(["predict", tmp_path / "p.npy", "-o", tmp_path / f"o.{fmt}", "--chunks", chunks], capsys)
        assert rc == 0, err
        np.testing.assert_array_equal(load_out(tmp_path / f"o.{fmt}"), rankseg(probs))
    assert no_temp_files(tmp_path)


def test_zarr_in_and_out(tmp_path, capsys):
    """Zarr in, Zarr and .npy out; in memory, and lazily through Dask when rankseg_np.dask exists."""
    da = pytest.importorskip("dask.array")
    zarr = pytest.importorskip("zarr")

    probs = probs_for(81, (2, 3, 10, 8))
    da.from_array(probs, chunks=(1, 3, 5, 8)).to_zarr(str(tmp_path / "p.zarr"))
    runs = [[]]
    try:
        import rankseg_np.dask  # noqa: F401
        runs.append(["--chunks", "1,-1,5,-1"])
    except ImportError:
        pass
    for extra in runs:
        rc, _, err = run(["predict", tmp_path / "p.zarr", "-o", tmp_path / "o.npy", *extra], capsys)
        assert rc == 0, err
        np.testing.assert_array_equal(np.load(tmp_path / "o.npy"), rankseg(probs))
        rc, _, err = run(["predict", tmp_path / "p.zarr", "-o", tmp_path / "o.zarr", *extra], capsys)
        assert rc == 0, err
        np.testing.assert_array_equal(zarr.open(str(tmp_path / "o.zarr"), mode="r")[...], rankseg(probs))
    # an existing store is swapped for the new one whole
    rc, _, err = run(["predict", tmp_path / "p.zarr", "-o", tmp_path / "o.zarr", "--metric", "iou", "--dtype", "uint8"],
                     capsys)
    assert rc == 0, err
    stored = zarr.open(str(tmp_path / "o.zarr"), mode="r")
    assert stored.dtype == np.uint8
    np.testing.assert_array_equal(stored[...], rankseg(probs, metric="iou"))
    assert no_temp_files(tmp_path)


def test_chunks_without_dask_is_a_usage_error(tmp_path, capsys, monkeypatch):
    import rankseg_np.cli.predict as predict

    monkeypatch.setattr(predict, "_has", lambda module: module != "dask")
    np.save(tmp_path / "p.npy", probs_for(0))
    rc, _, err = run(["predict", tmp_path / "p.npy", "-o", tmp_path / "o.npy", "--chunks", "auto"], capsys)
    assert rc == 2 and "dask" in err and len(err.strip().splitlines()) == 1
