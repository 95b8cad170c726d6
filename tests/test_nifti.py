"""nnU-Net v2 probabilities (.npz) -> a NIfTI label map on the reference grid, through the CLI.

The files are built here (no nnU-Net install): a reference NIfTI with a
non-diagonal affine (a rotation, anisotropic spacing, a shear and a
translation) and distinct side lengths, and an nnU-Net-style ``case.npz``
holding ``probabilities`` ``(C, z, y, x)``.  Distinctive blobs at known
``(z, y, x)`` must come out at NIfTI voxel ``(x, y, z)``, hence at the world
coordinate ``affine @ (x, y, z, 1)`` of the reference.  Skipped without nibabel.
"""

from __future__ import annotations

import gzip

import numpy as np
import pytest

nib = pytest.importorskip("nibabel")

from rankseg_np import rankseg  # noqa: E402
from rankseg_np.cli import main  # noqa: E402
from rankseg_np.integrations.nifti import NiftiError, find_reference, read_probabilities, write_labels_like  # noqa: E402

GRID_XYZ = (9, 7, 5)  # NIfTI (x, y, z); the probabilities are (C, z, y, x) = (C, 5, 7, 9)
AFFINE = np.array(
    [
        [0.0, -1.25, 0.3, 12.0],
        [0.8, 0.0, 0.0, -40.0],
        [0.0, 0.2, 3.0, 7.5],
        [0.0, 0.0, 0.0, 1.0],
    ]
)
# (class, (z, y, x)) of single-voxel blobs, and a 2x2x2 blob of class 3.
BLOBS = [(1, (0, 6, 8)), (2, (4, 0, 1)), (2, (2, 3, 0))]
CUBE = (3, (1, 2, 5))


def nnunet_probs(num_class: int = 4) -> np.ndarray:
    """(C, z, y, x) float32 softmax-like probabilities: confident background, a few confident blobs."""
    z, y, x = GRID_XYZ[::-1]
    probs = np.full((num_class, z, y, x), 0.02, dtype=np.float32)
    probs[0] = 1.0 - 0.02 * (num_class - 1)
    for c, (k, j, i) in BLOBS:
        probs[:, k, j, i] = 0.02
        probs[0, k, j, i] = 0.02
        probs[c, k, j, i] = 1.0 - 0.02 * (num_class - 1)
    c, (k, j, i) = CUBE
    probs[:, k:k + 2, j:j + 2, i:i + 2] = 0.02
    probs[c, k:k + 2, j:j + 2, i:i + 2] = 1.0 - 0.02 * (num_class - 1)
    return probs


def make_case(tmp_path, name="liver_007", grid=GRID_XYZ, reference_name=None):
    """Write ``<name>.npz`` (nnU-Net style) and a reference NIfTI; return their paths."""
    ref_dir = tmp_path / "ref"
    ref_dir.mkdir(exist_ok=True)
    npz = tmp_path / f"{name}.npz"
    np.savez_compressed(npz, probabilities=nnunet_probs())
    image = nib.Nifti1Image(np.arange(np.prod(grid), dtype=np.int16).reshape(grid), AFFINE)
    image.header.set_slope_inter(2.0, -1024.0)  # a CT-like scaling that must not leak into the labels
    image.header["descrip"] = b"reference for rankseg-np tests"
    reference = ref_dir / (reference_name or f"{name}.nii.gz")
    nib.save(image, str(reference))
    return npz, reference


def run(argv, capsys):
    rc = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


def test_labels_land_on_the_reference_voxels_and_world_coordinates(tmp_path, capsys):
    npz, reference = make_case(tmp_path)
    out_dir = tmp_path / "out"
    rc, _, err = run(["predict", npz, "-o", f"{out_dir}/", "--format", "nifti", "--like", reference], capsys)
    assert rc == 0, err
    result = nib.load(str(out_dir / "liver_007.nii.gz"))
    data = np.asanyarray(result.dataobj)
    ref = nib.load(str(reference))
    assert result.shape == GRID_XYZ and data.dtype == np.uint8 and result.get_data_dtype() == np.uint8
    np.testing.assert_array_equal(result.affine, ref.affine)
    assert int(result.header["sform_code"]) == int(ref.header["sform_code"])
    assert int(result.header["qform_code"]) == int(ref.header["qform_code"])
    assert result.header["descrip"] == ref.header["descrip"]  # the header is the reference's
    assert result.header.get_slope_inter() in ((None, None), (1.0, 0.0))  # no scaling of labels

    # Each blob at (z, y, x) in the probabilities is at NIfTI voxel (x, y, z) ...
    expected = np.zeros(GRID_XYZ, dtype=np.uint8)
    for c, (k, j, i) in BLOBS:
        assert data[i, j, k] == c
        expected[i, j, k] = c
    c, (k, j, i) = CUBE
    assert (data[i:i + 2, j:j + 2, k:k + 2] == c).all()
    expected[i:i + 2, j:j + 2, k:k + 2] = c
    np.testing.assert_array_equal(data, expected)  # ... and nowhere else
    # ... hence at the reference's world coordinate of that voxel: map it back through the
    # output's own affine (what a viewer does) and land on the same voxel.
    for c, (k, j, i) in BLOBS:
        world = ref.affine @ np.array([i, j, k, 1.0])
        voxel = np.linalg.solve(result.affine, world)[:3]
        ii, jj, kk = np.rint(voxel).astype(int)
        assert data[ii, jj, kk] == c
    # The labels are rankseg's on the probabilities as nnU-Net stores them.
    probs = read_probabilities(npz)
    np.testing.assert_array_equal(data, rankseg(probs[None])[0].transpose(2, 1, 0))


def test_like_directory_stem_and_nnunet_raw_image_names(tmp_path, capsys):
    npz, reference = make_case(tmp_path, name="case_3", reference_name="case_3_0000.nii.gz")
    out_dir = tmp_path / "out"
    rc, _, err = run(["predict", npz, "-o", out_dir, "--format", "nifti", "--like", reference.parent], capsys)
    assert rc == 2 and "end it with a slash" in err  # one input: -o names a file unless it ends in /
    rc, _, err = run(["predict", npz, "-o", f"{out_dir}/", "--format", "nifti", "--like", reference.parent], capsys)
    assert rc == 0, err
    assert (out_dir / "case_3.nii.gz").is_file()
    assert find_reference(reference.parent, npz) == reference
    (reference.parent / "case_3.nii.gz").write_bytes(reference.read_bytes())
    assert find_reference(reference.parent, npz) == reference.parent / "case_3.nii.gz"  # <stem> first


def test_single_output_file_by_suffix_and_uncompressed_nii(tmp_path, capsys):
    npz, reference = make_case(tmp_path)
    for name in ("labels.nii.gz", "labels.nii"):
        target = tmp_path / name
        rc, _, err = run(["predict", npz, "-o", target, "--like", reference], capsys)
        assert rc == 0, err
        head = target.read_bytes()[:2]
        assert (head == b"\x1f\x8b") == name.endswith(".gz")
        np.testing.assert_array_equal(
            np.asanyarray(nib.load(str(target)).dataobj), rankseg(nnunet_probs()[None])[0].transpose(2, 1, 0)
        )


def test_nnunet_npz_to_npy_keeps_the_array_order(tmp_path, capsys):
    npz, _ = make_case(tmp_path)
    rc, _, err = run(["predict", npz, "-o", tmp_path / "labels.npy"], capsys)
    assert rc == 0, err
    labels = np.load(tmp_path / "labels.npy")
    # One image, no batch axis: (z, y, x), as nnU-Net's probabilities.
    np.testing.assert_array_equal(labels, rankseg(nnunet_probs()[None])[0])


def test_other_arrays_keep_todays_rules(tmp_path, capsys):
    """A .npy of one image with its batch axis, (1, C, z, y, x), goes to the same voxels; a batch of two is refused."""
    _, reference = make_case(tmp_path)
    probs = nnunet_probs()
    np.save(tmp_path / "one.npy", probs[None])
    rc, _, err = run(["predict", tmp_path / "one.npy", "-o", tmp_path / "one.nii.gz", "--like", reference,
                      "--chunks", "1,-1,3,4,5"], capsys)
    assert rc == 0, err
    np.testing.assert_array_equal(
        np.asanyarray(nib.load(str(tmp_path / "one.nii.gz")).dataobj), rankseg(probs[None])[0].transpose(2, 1, 0)
    )
    np.save(tmp_path / "two.npy", np.stack([probs, probs]))
    rc, _, err = run(["predict", tmp_path / "two.npy", "-o", tmp_path / "two.nii.gz", "--like", reference], capsys)
    assert rc == 1 and "batch of 2 images" in err


def test_grid_mismatch_is_a_clear_error(tmp_path, capsys):
    npz, reference = make_case(tmp_path, grid=(5, 7, 9))  # (x, y, z) not reversed: the classic mistake
    rc, _, err = run(["predict", npz, "-o", f"{tmp_path}/out/", "--format", "nifti", "--like", reference], capsys)
    assert rc == 1
    assert "does not match reference image" in err and "(5, 7, 9)" in err
    assert not (tmp_path / "out" / "liver_007.nii.gz").exists()


def test_missing_reference_is_a_clear_error(tmp_path, capsys):
    npz, reference = make_case(tmp_path)
    rc, _, err = run(["predict", npz, "-o", f"{tmp_path}/o/", "--format", "nifti", "--like", tmp_path / "nope.nii.gz"],
                     capsys)
    assert rc != 0 and "does not exist" in err
    other = tmp_path / "empty"
    other.mkdir()
    rc, _, err = run(["predict", npz, "-o", f"{tmp_path}/o/", "--format", "nifti", "--like", other], capsys)
    assert rc == 1 and "no reference image for liver_007.npz" in err and "liver_007.nii.gz" in err
    rc, _, err = run(["predict", npz, "-o", f"{tmp_path}/o/", "--format", "nifti"], capsys)
    assert rc == 2 and "--like" in err


def test_npz_without_probabilities_is_a_clear_error(tmp_path, capsys):
    _, reference = make_case(tmp_path)
    wrong = tmp_path / "liver_007.npz"
    np.savez(wrong, softmax=nnunet_probs())
    with pytest.raises(NiftiError, match="no 'probabilities' array"):
        read_probabilities(wrong)
    rc, _, err = run(["predict", wrong, "-o", f"{tmp_path}/o/", "--format", "nifti", "--like", reference], capsys)
    assert rc == 1 and "'probabilities'" in err and "softmax" in err


def test_never_overwrites_the_reference(tmp_path, capsys):
    npz, reference = make_case(tmp_path)
    before = reference.read_bytes()
    rc, _, err = run(["predict", npz, "-o", reference.parent, "--format", "nifti", "--like", reference.parent],
                     capsys)
    assert rc != 0 and "reference" in err
    assert reference.read_bytes() == before


def test_write_labels_like_is_deterministic_and_checks_dtype(tmp_path):
    _, reference = make_case(tmp_path)
    labels = rankseg(nnunet_probs()[None])[0].astype(np.uint8)
    a = write_labels_like(labels, reference, tmp_path / "a.nii.gz").read_bytes()
    b = write_labels_like(labels, reference, tmp_path / "b.nii.gz").read_bytes()
    assert a == b and gzip.decompress(a)[:4] == (348).to_bytes(4, "little")  # NIfTI-1 sizeof_hdr
    with pytest.raises(TypeError, match="integer"):
        write_labels_like(labels.astype(np.float32), reference, tmp_path / "c.nii.gz")
