"""The CIFAR-10 binary reader and the digits-as-3x32x32 stand-in (``examples/cifar_data.py``)."""

from __future__ import annotations

import numpy as np
import pytest

from tests.conftest import load_example

data = load_example("cifar_data")


def _record(label: int, pixels: np.ndarray) -> bytes:
    """One CIFAR-10 record: the label byte, then the R, G and B planes (32x32 each, row-major)."""
    assert pixels.shape == (3, 32, 32) and pixels.dtype == np.uint8
    return bytes([label]) + pixels.tobytes()


def _pixels(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (3, 32, 32), dtype=np.uint8)


def test_reads_records_exactly_channel_by_channel(tmp_path):
    planes = [_pixels(i) for i in range(3)]
    marked = np.zeros((3, 32, 32), np.uint8)
    marked[0, 0, 1], marked[1, 2, 0], marked[2, 31, 30] = 255, 51, 1  # R row 0 col 1, G row 2 col 0, B row 31 col 30
    path = tmp_path / "data_batch_1.bin"
    path.write_bytes(b"".join(_record(lab, p) for lab, p in zip([3, 0, 9, 7], [*planes, marked], strict=True)))
    x, y = data.read_cifar10_batch(path)
    assert x.shape == (4, 3, 32, 32) and x.dtype == np.float32
    assert y.dtype == np.int64 and y.tolist() == [3, 0, 9, 7]
    for i, p in enumerate(planes):
        np.testing.assert_array_equal(x[i], p.astype(np.float32) / 255)
    assert (x[3, 0, 0, 1], x[3, 1, 2, 0], x[3, 2, 31, 30]) == (1.0, np.float32(51 / 255), np.float32(1 / 255))
    assert np.count_nonzero(x[3]) == 3  # nothing else set: the planes are R, G, B in that order, row-major
    assert 0.0 <= x.min() and x.max() <= 1.0


def test_load_cifar10_concatenates_the_five_batches_then_the_test_batch(tmp_path):
    for i, name in enumerate(data.TRAIN_FILES):
        (tmp_path / name).write_bytes(_record(i, _pixels(i)) + _record(i + 1, _pixels(10 + i)))
    (tmp_path / data.TEST_FILE).write_bytes(_record(9, _pixels(99)))
    x_train, y_train, x_test, y_test = data.load_cifar10(tmp_path)
    assert x_train.shape == (10, 3, 32, 32) and x_test.shape == (1, 3, 32, 32)
    assert y_train.tolist() == [0, 1, 1, 2, 2, 3, 3, 4, 4, 5] and y_test.tolist() == [9]
    np.testing.assert_array_equal(x_train[2], _pixels(1) / np.float32(255))
    np.testing.assert_array_equal(x_test[0], _pixels(99) / np.float32(255))


def test_missing_file_says_where_to_get_one(tmp_path):
    with pytest.raises(data.CifarFileError) as info:
        data.read_cifar10_batch(tmp_path / "data_batch_1.bin")
    message = str(info.value)
    assert str(tmp_path / "data_batch_1.bin") in message and "does not exist" in message
    assert "binary version" in message and "digits32()" in message
    with pytest.raises(data.CifarFileError, match="data_batch_2.bin does not exist"):  # the folder reader: the same
        (tmp_path / "data_batch_1.bin").write_bytes(_record(0, _pixels(0)))
        data.load_cifar10(tmp_path)


@pytest.mark.parametrize("size", [0, 3072, 3074, 2 * 3073 - 1])
def test_a_size_that_is_not_whole_records_is_refused(tmp_path, size):
    path = tmp_path / "data_batch_1.bin"
    path.write_bytes(bytes(size))
    with pytest.raises(data.CifarFileError) as info:
        data.read_cifar10_batch(path)
    message = str(info.value)
    assert f"{size:,} bytes is not a whole number of 3073-byte records" in message and str(path) in message


def test_a_label_over_nine_is_refused(tmp_path):
    path = tmp_path / "data_batch_1.bin"
    path.write_bytes(_record(4, _pixels(0)) + _record(12, _pixels(1)))
    with pytest.raises(data.CifarFileError, match="record 1 has label 12; CIFAR-10 labels are 0-9"):
        data.read_cifar10_batch(path)


def test_resize_nearest_makes_4x4_blocks():
    img = np.arange(64, dtype=np.float32).reshape(1, 1, 8, 8)
    big = data.resize_nearest(img, 32)
    assert big.shape == (1, 1, 32, 32)
    np.testing.assert_array_equal(big[0, 0, 4:8, 8:12], np.full((4, 4), img[0, 0, 1, 2]))
    np.testing.assert_array_equal(big[0, 0, ::4, ::4], img[0, 0])


def test_digits32_is_the_mlp_split_resized_with_gray_in_every_channel():
    digits = load_example("mlp_digits").digits
    x_train, y_train, x_test, y_test = data.digits32()
    x8_train, y8_train, x8_test, y8_test = digits()
    assert x_train.shape == (len(x8_train), 3, 32, 32) and x_test.shape == (len(x8_test), 3, 32, 32)
    assert x_train.dtype == np.float32 and y_train.dtype == np.int64
    np.testing.assert_array_equal(y_train, y8_train)
    np.testing.assert_array_equal(y_test, y8_test)
    np.testing.assert_array_equal(x_train[:, 0, ::4, ::4].reshape(len(x8_train), 64), x8_train)
    np.testing.assert_array_equal(x_test[:, 0, 3::4, 3::4].reshape(len(x8_test), 64), x8_test)
    np.testing.assert_array_equal(x_train[:, 1], x_train[:, 0])
    np.testing.assert_array_equal(x_train[:, 2], x_train[:, 0])
    assert x_train.min() == 0.0 and x_train.max() == 1.0
