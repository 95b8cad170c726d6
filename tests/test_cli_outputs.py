"""``rankseg-np predict`` never destroys what it did not write, never hangs, never prints a traceback.

Regression tests for issue 12, items 1-3 and the corrupt-header part of item 12.
Each builds the situation a user met (a plain directory named ``*.zarr``, a
device node or FIFO, an output path through a regular file, an ``.npz`` whose
header lies about its size) and checks the exit status, the single error line,
and that every byte the user had is still there.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import zipfile

import numpy as np
import pytest

from rankseg_np import rankseg
from rankseg_np.cli import main


def run(argv, capsys):
    capsys.readouterr()
    rc = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


def probs_for(seed: int, shape=(2, 3, 8, 6)) -> np.ndarray:
    z = np.exp(2.5 * np.random.default_rng(seed).standard_normal(shape))
    return (z / z.sum(axis=1, keepdims=True)).astype(np.float32)


def one_error_line(err: str) -> str:
    """The run printed exactly one line, an error, and no traceback."""
    lines = err.strip().splitlines()
    assert "Traceback" not in err and len(lines) == 1 and ": error: " in lines[0], err
    return lines[0]


def tree(path) -> dict[str, bytes]:
    """Every file under ``path`` with its content (what must survive untouched)."""
    found = {}
    for root, _dirs, files in os.walk(path):
        for name in files:
            full = os.path.join(root, name)
            with open(full, "rb") as f:
                found[os.path.relpath(full, path)] = f.read()
    return found


@pytest.fixture
def probs_file(tmp_path):
    path = tmp_path / "probs.npy"
    np.save(path, probs_for(0))
    return path


def needs_zarr():
    pytest.importorskip("dask.array")
    return pytest.importorskip("zarr")


# ---------------------------------------------------------------------------
# item 1: a directory named *.zarr that is not our store is never deleted
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("slash", ["", "/"])
def test_zarr_named_plain_dir_is_never_deleted(tmp_path, capsys, probs_file, slash):
    target = tmp_path / "r.zarr"
    target.mkdir()
    (target / "notes.txt").write_text("keep")
    before = tree(target)
    rc, _, err = run(["predict", probs_file, "-o", f"{target}{slash}"], capsys)
    assert rc == 2
    assert "not a Zarr store written by rankseg-np" in one_error_line(err)
    assert tree(target) == before


def test_foreign_zarr_store_is_never_replaced(tmp_path, capsys, probs_file):
    zarr = needs_zarr()
    target = tmp_path / "theirs.zarr"
    zarr.open(str(target), mode="w", shape=(3,), dtype="f4")[...] = [1, 2, 3]
    before = tree(target)
    rc, _, err = run(["predict", probs_file, "-o", target], capsys)
    assert rc == 2 and "refusing to replace" in one_error_line(err)
    assert tree(target) == before


def test_regular_file_named_zarr_is_never_replaced(tmp_path, capsys, probs_file):
    target = tmp_path / "r.zarr"
    target.write_text("keep")
    rc, _, err = run(["predict", probs_file, "-o", target], capsys)
    assert rc == 2 and "refusing to replace" in one_error_line(err)
    assert target.read_text() == "keep"


def test_zarr_store_we_wrote_is_marked_and_replaced(tmp_path, capsys, probs_file):
    zarr = needs_zarr()
    target = tmp_path / "out.zarr"
    rc, _, err = run(["predict", probs_file, "-o", target], capsys)
    assert rc == 0, err
    meta = json.loads((target / "zarr.json").read_text()) if (target / "zarr.json").exists() \
        else {"attributes": json.loads((target / ".zattrs").read_text())}
    assert meta["attributes"]["rankseg_np"]["written_by"] == "rankseg-np predict"
    rc, _, err = run(["predict", probs_file, "-o", f"{target}/", "--metric", "iou"], capsys)
    assert rc == 0, err
    np.testing.assert_array_equal(zarr.open(str(target), mode="r")[...], rankseg(probs_for(0), metric="iou"))
    assert not [e for e in os.listdir(tmp_path) if e.endswith((".tmp", ".old"))]


def test_outputs_inside_a_directory_refuse_foreign_entries(tmp_path, capsys):
    """Several inputs: an entry in -o with an output's name that we did not write stops the run."""
    inputs = tmp_path / "in"
    inputs.mkdir()
    for i in range(2):
        np.save(inputs / f"c{i}.npy", probs_for(i))
    out = tmp_path / "out"
    (out / "c1.npy").mkdir(parents=True)
    (out / "c1.npy" / "notes.txt").write_text("keep")
    rc, _, err = run(["predict", inputs, "-o", out], capsys)
    assert rc == 2 and "c1.npy" in one_error_line(err)
    assert tree(out) == {os.path.join("c1.npy", "notes.txt"): b"keep"}


def test_symlink_output_is_refused(tmp_path, capsys, probs_file):
    target = tmp_path / "target.npy"
    target.write_text("keep")
    link = tmp_path / "link.npy"
    link.symlink_to(target)
    rc, _, err = run(["predict", probs_file, "-o", link], capsys)
    assert rc == 2 and "symbolic link" in one_error_line(err)
    assert link.is_symlink() and target.read_text() == "keep"


def test_existing_regular_output_is_still_replaced(tmp_path, capsys, probs_file):
    target = tmp_path / "o.npy"
    target.write_text("old output")
    rc, _, err = run(["predict", probs_file, "-o", target], capsys)
    assert rc == 0, err
    np.testing.assert_array_equal(np.load(target), rankseg(probs_for(0)))


# ---------------------------------------------------------------------------
# item 2: special files are neither replaced nor opened
# ---------------------------------------------------------------------------


def test_character_device_output_is_refused(tmp_path, capsys, probs_file):
    if os.geteuid() == 0:  # root can make a device node: a copy of /dev/null's
        node = tmp_path / "fake_null"
        os.mknod(node, 0o666 | stat.S_IFCHR, os.stat("/dev/null").st_rdev)
    else:
        node = "/dev/null"
    rc, _, err = run(["predict", probs_file, "-o", node], capsys)
    assert rc == 2 and "character device" in one_error_line(err)
    assert stat.S_ISCHR(os.lstat(node).st_mode)


def test_fifo_output_is_refused(tmp_path, capsys, probs_file):
    fifo = tmp_path / "o.npy"
    os.mkfifo(fifo)
    rc, _, err = run(["predict", probs_file, "-o", fifo], capsys)
    assert rc == 2 and "FIFO" in one_error_line(err)
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode)


def test_fifo_input_in_a_directory_does_not_hang(tmp_path):
    """A FIFO named *.npy is refused without being opened (opening it would block forever)."""
    inputs = tmp_path / "in"
    inputs.mkdir()
    np.save(inputs / "a.npy", probs_for(0))
    os.mkfifo(inputs / "b.npy")
    out = tmp_path / "out"
    code = "import sys; from rankseg_np.cli import main; sys.exit(main(sys.argv[1:]))"
    proc = subprocess.run([sys.executable, "-c", code, "predict", str(inputs), "-o", str(out)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    assert [line for line in proc.stderr.splitlines() if ": error: " in line] == [
        f"rankseg-np predict: error: {inputs / 'b.npy'}: is a FIFO, not a regular file; not read"
    ]
    np.testing.assert_array_equal(np.load(out / "a.npy"), rankseg(probs_for(0)))
    assert not (out / "b.npy").exists()


# ---------------------------------------------------------------------------
# item 3: one-line errors for impossible output paths
# ---------------------------------------------------------------------------


def test_output_dir_that_is_a_file_is_one_line(tmp_path, capsys, probs_file):
    somefile = tmp_path / "somefile"
    somefile.write_text("keep")
    rc, _, err = run(["predict", probs_file, "-o", f"{somefile}/"], capsys)
    assert rc == 2 and "not a directory" in one_error_line(err)
    assert somefile.read_text() == "keep"


def test_output_dir_below_a_file_is_one_line(tmp_path, capsys, probs_file):
    somefile = tmp_path / "somefile"
    somefile.write_text("keep")
    second = tmp_path / "b.npy"
    np.save(second, probs_for(1))
    rc, _, err = run(["predict", probs_file, second, "-o", somefile / "sub"], capsys)
    assert rc == 2 and "somefile" in one_error_line(err)
    assert somefile.read_text() == "keep"


@pytest.mark.parametrize("suffix", [".npy", ".npz", ".zarr"])
def test_array_suffix_output_for_several_inputs_is_refused(tmp_path, capsys, probs_file, suffix):
    second = tmp_path / "b.npy"
    np.save(second, probs_for(1))
    combined = tmp_path / f"combined{suffix}"
    rc, _, err = run(["predict", probs_file, second, "-o", combined], capsys)
    assert rc == 2 and "several inputs" in one_error_line(err)
    assert not os.path.lexists(combined)


# ---------------------------------------------------------------------------
# item 12: a header that claims more data than the file holds
# ---------------------------------------------------------------------------


def lying_npz(path, shape=(1000, 1000, 1000, 1000)) -> None:
    """A ~1 KB .npz whose member's header claims ``shape`` float32 (4 TB here)."""
    np.savez(path, probs=np.zeros((2, 3, 4, 4), np.float32))
    with zipfile.ZipFile(path) as z:
        member = z.read("probs.npy")
    header = np.lib.format.header_data_from_array_1_0(np.zeros((2, 3, 4, 4), np.float32))
    header["shape"] = shape
    buf = __import__("io").BytesIO()
    np.lib.format.write_array_header_1_0(buf, header)
    data_start = len(member) - 2 * 3 * 4 * 4 * 4
    forged = buf.getvalue() + member[data_start:]
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("probs.npy", forged)


def test_npz_header_claiming_huge_shape_is_implausible(tmp_path, capsys):
    src = tmp_path / "corrupt.npz"
    lying_npz(src)
    assert os.path.getsize(src) < 2048
    rc, _, err = run(["predict", src, "-o", tmp_path / "o.npy"], capsys)
    line = one_error_line(err)
    assert rc == 1 and "implausible" in line and "out of memory" not in line
    assert not (tmp_path / "o.npy").exists()


def test_npy_header_claiming_huge_shape_is_implausible(tmp_path, capsys):
    src = tmp_path / "corrupt.npy"
    with open(src, "wb") as f:
        np.lib.format.write_array_header_1_0(
            f, {"descr": "<f4", "fortran_order": False, "shape": (1000, 1000, 1000, 1000)})
        f.write(b"\0" * 512)
    rc, _, err = run(["predict", src, "-o", tmp_path / "o.npy"], capsys)
    line = one_error_line(err)
    assert rc == 1 and "implausible" in line


def test_entry_appearing_during_the_run_is_not_replaced(tmp_path, capsys, probs_file, monkeypatch):
    """The check is repeated just before the rename: a directory made meanwhile survives."""
    target = tmp_path / "o.npy"
    real_save = np.save

    def save_while_someone_makes_a_directory(f, *args, **kwargs):
        target.mkdir()
        (target / "notes.txt").write_text("keep")
        real_save(f, *args, **kwargs)

    monkeypatch.setattr(np, "save", save_while_someone_makes_a_directory)
    rc, _, err = run(["predict", probs_file, "-o", target], capsys)
    assert rc == 1 and "refusing to replace" in one_error_line(err)
    assert tree(target) == {"notes.txt": b"keep"}
    assert not [e for e in os.listdir(tmp_path) if e.endswith((".tmp", ".old"))]


def test_zarr_named_dir_appearing_during_the_run_is_not_deleted(tmp_path, capsys, probs_file, monkeypatch):
    needs_zarr()
    import dask.array as da

    target = tmp_path / "o.zarr"
    real_to_zarr = da.Array.to_zarr

    def to_zarr_while_someone_makes_a_directory(self, *args, **kwargs):
        target.mkdir()
        (target / "notes.txt").write_text("keep")
        return real_to_zarr(self, *args, **kwargs)

    monkeypatch.setattr(da.Array, "to_zarr", to_zarr_while_someone_makes_a_directory)
    rc, _, err = run(["predict", probs_file, "-o", target], capsys)
    assert rc == 1 and "refusing to replace" in one_error_line(err)
    assert tree(target) == {"notes.txt": b"keep"}
    assert not [e for e in os.listdir(tmp_path) if e.endswith((".tmp", ".old"))]


def test_zarr_metadata_fifo_is_not_opened(tmp_path, capsys, probs_file):
    """Deciding whether a store is ours reads its metadata file, but never a FIFO posing as one."""
    target = tmp_path / "o.zarr"
    target.mkdir()
    os.mkfifo(target / "zarr.json")
    rc, _, err = run(["predict", probs_file, "-o", target], capsys)
    assert rc == 2 and "refusing to replace" in one_error_line(err)
    assert stat.S_ISFIFO(os.lstat(target / "zarr.json").st_mode)
