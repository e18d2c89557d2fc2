"""Every fault of an IDX file said exactly (data/idx.py): the oracle is the byte layout of the format, written here by
hand, and the message each fault must give, word for word."""

from __future__ import annotations

import numpy as np
import pytest

from softmax_lab.data.idx import IMAGES_MAGIC, LABELS_MAGIC, read_idx, read_split
from softmax_lab.errors import DataError


def header(magic: int, n: int, *dims: int) -> bytes:
    return b"".join(v.to_bytes(4, "big") for v in (magic, n, *dims))


def write(tmp_path, name: str, data: bytes):
    path = tmp_path / name
    path.write_bytes(data)
    return path


def refused(path, expect=None) -> str:
    with pytest.raises(DataError) as e:
        read_idx(path, expect)
    return str(e.value)


@pytest.mark.parametrize("size", [0, 7])
def test_fewer_than_8_bytes_is_not_even_a_header(tmp_path, size):
    p = write(tmp_path, "x", bytes(size))
    assert refused(p) == f"{p}: truncated ({size} bytes, not even an IDX header)."


def test_exactly_a_label_header_is_an_empty_label_file(tmp_path):
    assert read_idx(write(tmp_path, "x", header(LABELS_MAGIC, 0))).tolist() == []


@pytest.mark.parametrize(("expect", "want"), [(IMAGES_MAGIC, "2051 (images)"), (LABELS_MAGIC, "2049 (labels)"),
                                              (None, "2051 or 2049")])
def test_a_wrong_magic_number_says_which_one_was_wanted(tmp_path, expect, want):
    p = write(tmp_path, "x", header(2050, 0))
    assert refused(p, expect) == f"{p}: wrong IDX magic number 2050, expected {want}; not a Fashion-MNIST file."


def test_the_magic_number_is_all_four_bytes(tmp_path):
    p = write(tmp_path, "x", b"\x01" + header(LABELS_MAGIC, 0)[1:])  # 0x01000801: not 2049
    assert refused(p) == f"{p}: wrong IDX magic number {0x01000801}, expected 2051 or 2049; not a Fashion-MNIST file."


def test_labels_where_images_are_wanted_are_refused(tmp_path):
    p = write(tmp_path, "x", header(LABELS_MAGIC, 0))
    assert "expected 2051 (images)" in refused(p, IMAGES_MAGIC)


@pytest.mark.parametrize("size", [8, 15])
def test_an_image_header_shorter_than_16_bytes(tmp_path, size):
    p = write(tmp_path, "x", header(IMAGES_MAGIC, 0, 28, 28)[:size])
    assert refused(p) == f"{p}: truncated image header ({size} bytes)."


def test_an_image_header_of_16_bytes_and_no_images_is_an_empty_file(tmp_path):
    assert tuple(read_idx(write(tmp_path, "x", header(IMAGES_MAGIC, 0, 28, 28))).shape) == (0, 28, 28)


@pytest.mark.parametrize(("rows", "cols"), [(28, 27), (27, 28), (0x01000000 + 28, 28), (28, 0x01000000 + 28)])
def test_images_that_are_not_28x28_are_refused_with_their_size(tmp_path, rows, cols):
    p = write(tmp_path, "x", header(IMAGES_MAGIC, 0, rows, cols))
    assert refused(p) == f"{p}: images are {rows}x{cols}, expected 28x28."


@pytest.mark.parametrize(("extra", "fault"), [(-1, "truncated"), (1, "has trailing bytes")])
def test_a_size_that_is_not_what_the_header_announces(tmp_path, extra, fault):
    data = header(LABELS_MAGIC, 3) + bytes(3 + extra)
    p = write(tmp_path, "x", data)
    assert refused(p) == f"{p}: {fault}: {len(data)} bytes, the header announces 3 items (11 bytes)."


def test_the_item_count_is_all_four_bytes(tmp_path):
    data = header(LABELS_MAGIC, 0x01000002) + bytes(2)  # 16777218 announced, 2 there
    p = write(tmp_path, "x", data)
    assert refused(p) == f"{p}: truncated: 10 bytes, the header announces 16777218 items (16777226 bytes)."


@pytest.mark.parametrize(("labels", "bad", "at"), [([0, 9, 10, 3], 10, 2), ([9, 255], 255, 1), ([10], 10, 0)])
def test_a_label_out_of_range_is_named_with_its_index(tmp_path, labels, bad, at):
    p = write(tmp_path, "x", header(LABELS_MAGIC, len(labels)) + bytes(labels))
    assert refused(p) == f"{p}: label {bad} at index {at} is out of range 0..9."


def test_labels_0_to_9_and_images_are_read_as_written(tmp_path):
    assert read_idx(write(tmp_path, "y", header(LABELS_MAGIC, 3) + bytes([0, 9, 5]))).tolist() == [0, 9, 5]
    pixels = np.arange(2 * 784, dtype=np.uint8).reshape(2, 28, 28) % 251
    X = read_idx(write(tmp_path, "x", header(IMAGES_MAGIC, 2, 28, 28) + pixels.tobytes()))
    assert np.array_equal(X.numpy(), pixels)


def test_a_split_with_other_counts_is_refused_naming_both_files(tmp_path):
    X = write(tmp_path, "x", header(IMAGES_MAGIC, 1, 28, 28) + bytes(784))
    y = write(tmp_path, "y", header(LABELS_MAGIC, 2) + bytes(2))
    with pytest.raises(DataError) as e:
        read_split(X, y)
    assert str(e.value) == (f"{X} holds 1 images but {y} holds 2 labels; the two files must come from the same "
                            "release.")


def test_a_split_checks_which_file_is_which(tmp_path):
    X = write(tmp_path, "x", header(IMAGES_MAGIC, 1, 28, 28) + bytes(784))
    y = write(tmp_path, "y", header(LABELS_MAGIC, 1) + bytes(1))
    assert "expected 2051 (images)" in pytest.raises(DataError, read_split, y, X).value.args[0]
    Xs, ys = read_split(X, y)
    assert ys.dtype.is_floating_point is False and str(ys.dtype) == "torch.int64" and Xs.shape == (1, 28, 28)
    with pytest.raises(DataError, match="expected 2049 \\(labels\\)"):
        read_split(X, X)


def test_a_folder_where_a_file_should_be_says_why(tmp_path):
    (tmp_path / "d").mkdir()
    assert refused(tmp_path / "d") == f"{tmp_path / 'd'}: cannot be read (Is a directory)."
