"""Image data for the CIFAR-shaped CNN (``cnn_cifar.py``): the CIFAR-10 binary batches, and a stand-in that
ships with scikit-learn (no download at run time).

    x, y = read_cifar10_batch("cifar-10-batches-bin/data_batch_1.bin")   # (N, 3, 32, 32) float32 in [0, 1]
    x_train, y_train, x_test, y_test = load_cifar10("cifar-10-batches-bin")
    x_train, y_train, x_test, y_test = digits32()                         # sklearn's digits as 3x32x32 images

The CIFAR-10 binary format (https://www.cs.toronto.edu/~kriz/cifar.html, "binary version"): each file is a
run of 3073-byte records, one label byte (0-9) and 3072 pixel bytes: the red channel's 1024 values, then the
green's, then the blue's, each a 32x32 image row-major. The training set is ``data_batch_1.bin`` ...
``data_batch_5.bin`` (10,000 records each), the test set ``test_batch.bin``.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))  # run or imported by path, like the other examples
from mlp_digits import digits  # noqa: E402

SIDE, CHANNELS = 32, 3
RECORD_BYTES = 1 + CHANNELS * SIDE * SIDE  # 3073: the label byte, then R, G, B planes of 32x32
TRAIN_FILES = tuple(f"data_batch_{i}.bin" for i in range(1, 6))
TEST_FILE = "test_batch.bin"


class CifarFileError(ValueError):
    """A CIFAR-10 binary batch that is missing or not in the format (3073-byte records)."""


def read_cifar10_batch(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """One CIFAR-10 binary batch file: images (N, 3, 32, 32) float32 scaled to [0, 1] (byte / 255) and labels
    (N,) int64. Raises ``CifarFileError`` for a missing file, a size that is not a whole number of records, or a
    label byte outside 0-9."""
    path = Path(path)
    if not path.is_file():
        raise CifarFileError(f"CIFAR-10 batch {path} does not exist. Download and unpack the binary version "
                             f"(cifar-10-binary.tar.gz from https://www.cs.toronto.edu/~kriz/cifar.html) and pass "
                             f"a file such as cifar-10-batches-bin/{TRAIN_FILES[0]}, or use digits32() offline.")
    raw = np.fromfile(path, dtype=np.uint8)
    if raw.size == 0 or raw.size % RECORD_BYTES:
        raise CifarFileError(f"CIFAR-10 batch {path}: {raw.size:,} bytes is not a whole number of "
                             f"{RECORD_BYTES}-byte records (1 label byte + 3x32x32 pixel bytes; a full batch is "
                             f"{10_000 * RECORD_BYTES:,} bytes). Is it the binary version, not the Python pickle?")
    records = raw.reshape(-1, RECORD_BYTES)
    labels = records[:, 0].astype(np.int64)
    if labels.max() > 9:
        bad = int(np.argmax(labels > 9))
        raise CifarFileError(f"CIFAR-10 batch {path}: record {bad} has label {labels[bad]}; CIFAR-10 labels are "
                             f"0-9 (CIFAR-100's binary records have two label bytes and are not read here)")
    images = records[:, 1:].reshape(-1, CHANNELS, SIDE, SIDE).astype(np.float32) / 255.0
    return images, labels


def load_cifar10(folder: str | Path) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(x_train, y_train, x_test, y_test) from a ``cifar-10-batches-bin`` folder: the five training batches in
    order, then ``test_batch.bin`` (``read_cifar10_batch`` for the formats and errors)."""
    folder = Path(folder)
    train = [read_cifar10_batch(folder / name) for name in TRAIN_FILES]
    x_test, y_test = read_cifar10_batch(folder / TEST_FILE)
    return np.concatenate([x for x, _ in train]), np.concatenate([y for _, y in train]), x_test, y_test


def resize_nearest(images: np.ndarray, side: int) -> np.ndarray:
    """Square images (N, C, h, h) -> (N, C, side, side), nearest neighbour: output pixel i takes input pixel
    floor(i * h / side) (for 8 -> 32 each pixel becomes a 4x4 block)."""
    h = images.shape[-1]
    src = np.arange(side) * h // side
    return images[..., src[:, None], src[None, :]]


def digits32(seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """sklearn's 8x8 digits as CIFAR-shaped images: (x_train, y_train, x_test, y_test), images (N, 3, 32, 32)
    float32 in [0, 1], labels int64. The split is ``mlp_digits.digits``'s (same seed: the same 75/25 split of
    the same shuffled samples); each 8x8 image is resized by ``resize_nearest`` and its gray channel copied to R,
    G and B."""
    x_train, y_train, x_test, y_test = digits(seed)

    def rgb(x: np.ndarray) -> np.ndarray:
        gray = resize_nearest(x.reshape(-1, 1, 8, 8), SIDE)
        return np.ascontiguousarray(np.repeat(gray, CHANNELS, axis=1))

    return rgb(x_train), y_train, rgb(x_test), y_test
