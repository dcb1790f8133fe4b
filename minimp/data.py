"""The data sets minimp trains on, as plain NumPy arrays.

Two real data sets ship inside the package, so no lesson or test downloads
anything: the 8x8 digits (`load_digits`) for the MLP and tiny Shakespeare
(`load_shakespeare`) for the character-level GPT. `batches` walks a data set in
seeded, shuffled minibatches.

This is the top of the data layer and imports nothing from minimp: features come
back as float32 arrays, labels as int64 class indices (what PyTorch's
`cross_entropy` takes), and the training code wraps them in tensors. Every
function checks its inputs before it changes anything (no array is modified in
place, and a NumPy Generator is not advanced when the call is refused).
"""

from __future__ import annotations

import gzip
import hashlib
import io
import os
from collections.abc import Iterator
from dataclasses import dataclass
from numbers import Real
from pathlib import Path

import numpy as np

__all__ = [
    "DIGITS_PATH",
    "DIGITS_SHA256",
    "SHAKESPEARE_MD5",
    "SHAKESPEARE_PATH",
    "CharCorpus",
    "Dataset",
    "batches",
    "load_digits",
    "load_shakespeare",
]

DIGITS_PATH = Path(__file__).with_name("datasets") / "digits.npz"
# SHA-256 of the shipped file; how it was produced is in minimp/datasets/README.md.
DIGITS_SHA256 = "af104d81e7cd419be5f343d23c6ca2e4e4ff847b06636260802df8e903c6183f"
SHAKESPEARE_PATH = Path(__file__).with_name("datasets") / "tinyshakespeare.txt.gz"
# md5 of the decompressed text: that of char-rnn's input.txt, as its README gives it.
SHAKESPEARE_MD5 = "6fb458f1232090904fb40fe944165e91"


@dataclass(frozen=True, eq=False)
class Dataset:
    """A classification data set split into a training and a test part.

    `x_*` are (n, n_features) floating arrays, `y_*` are (n,) integer class
    indices in [0, n_classes). The fields are checked on construction (finite
    features, matching lengths and widths, labels in range), so training code can
    trust them. Frozen means the fields cannot be rebound; the arrays themselves
    are ordinary, writable NumPy arrays, so copy before changing them in place.
    `eq=False`: data sets compare by identity, since `==` on arrays is elementwise.
    """

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    name: str
    n_classes: int

    def __post_init__(self) -> None:
        if not isinstance(self.n_classes, int) or self.n_classes < 2:
            raise ValueError(f"n_classes must be an int >= 2, got {self.n_classes!r}")
        for part in ("train", "test"):
            x, y = getattr(self, f"x_{part}"), getattr(self, f"y_{part}")
            _check_xy(x, y, f"x_{part}", f"y_{part}")
            _check_labels(y, f"y_{part}", self.n_classes)
        if self.x_train.shape[1] != self.x_test.shape[1]:
            raise ValueError(
                f"x_train has {self.x_train.shape[1]} features but x_test has "
                f"{self.x_test.shape[1]}; both parts must describe the same inputs"
            )

    @property
    def n_features(self) -> int:
        return self.x_train.shape[1]

    def __repr__(self) -> str:
        return (
            f"Dataset({self.name!r}, n_classes={self.n_classes}, "
            f"train={self.x_train.shape} {self.x_train.dtype}, "
            f"test={self.x_test.shape} {self.x_test.dtype})"
        )


def load_digits(
    test_fraction: float = 0.2, seed: int = 0, path: str | os.PathLike[str] | None = None
) -> Dataset:
    """The shipped handwritten-digits set, split into train and test parts.

    1,797 images of 8x8 pixels, 10 classes: the test set of the UCI "Optical
    Recognition of Handwritten Digits" data as scikit-learn bundles it
    (`sklearn.datasets.load_digits`), stored as uint8 in `minimp/datasets/digits.npz`
    (produced with scikit-learn 1.9.1; recipe in `minimp/datasets/README.md`).
    Citation: Alpaydin, E. & Kaynak, C. (1998). Optical Recognition of Handwritten
    Digits. UCI Machine Learning Repository. doi:10.24432/C50P49. License: CC BY 4.0.

    Features are pixel / 16 as float32, in [0, 1]. Every such value k/16 is exact
    in float16 too, so casting the inputs to float16 loses nothing: what a lesson
    measures comes from the arithmetic, not from the data. The split is
    stratified: in each class, round(test_fraction * class size) images, drawn
    with `np.random.default_rng(seed)`, go to the test part; both parts keep the
    file's order. Same seed, same split, on every platform.

    `path` loads another copy of the same file (it must match `DIGITS_SHA256`); a
    missing file raises FileNotFoundError and a corrupt one ValueError, both
    naming the file.
    """
    _check_fraction(test_fraction)
    _check_seed(seed)
    file = DIGITS_PATH if path is None else Path(path)
    try:
        raw = file.read_bytes()
    except FileNotFoundError:
        raise FileNotFoundError(
            f"digits data file {str(file)!r} is missing; minimp ships it as package data "
            "(minimp/datasets/digits.npz): reinstall minimp, or rebuild the file as "
            "minimp/datasets/README.md describes"
        ) from None
    digest = hashlib.sha256(raw).hexdigest()
    if digest != DIGITS_SHA256:
        raise ValueError(
            f"digits data file {str(file)!r} is corrupt: its SHA-256 is {digest}, expected "
            f"{DIGITS_SHA256}; reinstall minimp, or rebuild the file as "
            "minimp/datasets/README.md describes"
        )
    with np.load(io.BytesIO(raw), allow_pickle=False) as npz:
        images, labels = npz["images"], npz["labels"]
    # k / 16 is exact in float32 (and float16): a power-of-two division only
    # shifts the exponent.
    x = images.astype(np.float32) / np.float32(16)
    return _split(x, labels.astype(np.int64), test_fraction, seed, "digits", 10)


def batches(
    x: np.ndarray,
    y: np.ndarray,
    batch_size: int,
    rng: np.random.Generator | None = None,
    *,
    drop_last: bool = False,
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """One epoch of minibatches `(x[idx], y[idx])`, shuffled by `rng`.

    The permutation is drawn from `rng` once, when `batches` is called (not when
    the first batch is taken), so a seeded Generator gives the same epoch every
    run and consecutive calls give consecutive epochs. `rng=None` keeps the order
    of the data (for evaluation). The last, smaller batch is kept unless
    `drop_last=True`, as in PyTorch's DataLoader; drop it when every step must see
    the same batch size. Each batch is a copy; `x` and `y` are not modified.
    """
    if not isinstance(batch_size, int | np.integer) or isinstance(batch_size, bool):
        raise TypeError(f"batch_size must be an int, got {type(batch_size).__name__}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if rng is not None and not isinstance(rng, np.random.Generator):
        raise TypeError(
            f"rng must be a numpy.random.Generator or None, got {type(rng).__name__}; "
            "pass np.random.default_rng(seed)"
        )
    _check_xy(x, y, "x", "y")
    n = len(x)
    order = np.arange(n) if rng is None else rng.permutation(n)
    stop = n - n % batch_size if drop_last else n

    def epoch() -> Iterator[tuple[np.ndarray, np.ndarray]]:
        for start in range(0, stop, batch_size):
            idx = order[start : start + batch_size]
            yield x[idx], y[idx]

    return epoch()


def _check_fraction(test_fraction: object) -> None:
    if (
        not isinstance(test_fraction, Real)
        or isinstance(test_fraction, bool)
        or not 0 < test_fraction < 1
    ):
        raise ValueError(
            f"test_fraction must be a number strictly between 0 and 1, got {test_fraction!r}"
        )


def _check_seed(seed: object) -> None:
    # An int, not None: default_rng(None) would draw fresh entropy and the split
    # would change from run to run.
    if not isinstance(seed, int | np.integer) or isinstance(seed, bool) or seed < 0:
        raise ValueError(f"seed must be an int >= 0, got {seed!r}")


def _check_xy(x: object, y: object, x_name: str, y_name: str) -> None:
    """Raise a ValueError naming the array unless x is (n, d) finite floats and y (n,) ints."""
    if not isinstance(x, np.ndarray) or x.ndim != 2 or not np.issubdtype(x.dtype, np.floating):
        raise ValueError(f"{x_name} must be a 2-D floating NumPy array, got {_describe(x)}")
    if not isinstance(y, np.ndarray) or y.ndim != 1 or not np.issubdtype(y.dtype, np.integer):
        raise ValueError(f"{y_name} must be a 1-D integer NumPy array, got {_describe(y)}")
    if len(x) != len(y):
        raise ValueError(
            f"{x_name} has {len(x)} rows but {y_name} has {len(y)} labels; they must match"
        )
    finite = np.isfinite(x)
    if not finite.all():
        n_nan = int(np.isnan(x).sum())
        n_inf = x.size - int(finite.sum()) - n_nan
        bad_rows = int((~finite.all(axis=1)).sum())
        raise ValueError(
            f"{x_name} contains {n_nan} NaN and {n_inf} inf values (in {bad_rows} of "
            f"{len(x)} rows); drop those rows, e.g. keep = np.isfinite({x_name}).all(axis=1), "
            "or fix them at the source: a network cannot learn from non-finite inputs"
        )


def _check_labels(y: np.ndarray, name: str, n_classes: int) -> None:
    if y.size and (y.min() < 0 or y.max() >= n_classes):
        raise ValueError(
            f"{name} holds labels from {y.min()} to {y.max()}, outside [0, {n_classes})"
        )


def _describe(a: object) -> str:
    if isinstance(a, np.ndarray):
        return f"a {a.ndim}-D {a.dtype} array of shape {a.shape}"
    return f"a {type(a).__name__}"


def _split(
    x: np.ndarray, y: np.ndarray, test_fraction: float, seed: int, name: str, n_classes: int
) -> Dataset:
    """Stratified split: per class, round(test_fraction * count) rows, seeded, go to test."""
    rng = np.random.default_rng(seed)
    is_test = np.zeros(len(y), dtype=bool)
    for c in range(n_classes):
        rows = np.flatnonzero(y == c)
        n_test = round(test_fraction * len(rows))
        is_test[rng.choice(rows, size=n_test, replace=False)] = True
    n_test = int(is_test.sum())
    if n_test == 0 or n_test == len(y):
        raise ValueError(
            f"test_fraction={test_fraction!r} leaves {n_test} of {len(y)} rows in the "
            "test part; both parts need at least one row"
        )
    return Dataset(x[~is_test], y[~is_test], x[is_test], y[is_test], name, n_classes)


@dataclass(frozen=True, eq=False)
class CharCorpus:
    """A text as character ids, split into a training and a validation part.

    `chars` is the vocabulary, every distinct character of the text in sorted
    order; a character's id is its position there. `train` and `val` are 1-D int64
    arrays of ids (int64: what `cross_entropy` takes as targets). `batch` samples
    windows of `block_size` characters, as nanoGPT's `get_batch` does.
    """

    train: np.ndarray
    val: np.ndarray
    chars: str
    block_size: int

    @property
    def vocab_size(self) -> int:
        return len(self.chars)

    def encode(self, text: str) -> np.ndarray:
        ids = {c: i for i, c in enumerate(self.chars)}
        unknown = sorted(set(text) - ids.keys())
        if unknown:
            raise ValueError(f"encode: characters {unknown!r} are not in the vocabulary")
        return np.array([ids[c] for c in text], dtype=np.int64)

    def decode(self, ids: np.ndarray) -> str:
        return "".join(self.chars[int(i)] for i in np.asarray(ids).reshape(-1))

    def batch(
        self, split: str, batch_size: int, generator: np.random.Generator
    ) -> tuple[np.ndarray, np.ndarray]:
        """`batch_size` random windows: inputs x (B, T) and targets y = x shifted by
        one (the next character at every position), T = block_size. Start offsets are
        drawn from `generator`, uniformly over every window that fits in the split."""
        if split not in ("train", "val"):
            raise ValueError(f"split must be 'train' or 'val', got {split!r}")
        if not isinstance(batch_size, int | np.integer) or isinstance(batch_size, bool):
            raise TypeError(f"batch_size must be an int, got {type(batch_size).__name__}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if not isinstance(generator, np.random.Generator):
            raise TypeError(
                f"generator must be a numpy.random.Generator, got {type(generator).__name__}; "
                "pass np.random.default_rng(seed)"
            )
        data = self.train if split == "train" else self.val
        starts = generator.integers(0, len(data) - self.block_size, size=batch_size)
        window = starts[:, None] + np.arange(self.block_size)
        return data[window], data[window + 1]


def load_shakespeare(
    block_size: int = 64, val_fraction: float = 0.1, path: str | os.PathLike[str] | None = None
) -> CharCorpus:
    """The tiny Shakespeare text (shipped, like the digits) as a character-level corpus: the first
    1 - `val_fraction` of it (90%) for training, the rest for validation, as in
    nanoGPT's shakespeare_char.

    1,115,394 characters (65 distinct) of Shakespeare's plays, public domain,
    compiled by Andrej Karpathy for char-rnn (`data/tinyshakespeare/input.txt`),
    shipped gzip-compressed in `minimp/datasets/tinyshakespeare.txt.gz`; the
    decompressed text must have md5 `SHAKESPEARE_MD5` (source and recipe in
    `minimp/datasets/README.md`). A missing file raises FileNotFoundError and a
    corrupt one ValueError, both naming the file.
    """
    if isinstance(block_size, bool) or not isinstance(block_size, int | np.integer):
        raise TypeError(f"block_size must be an int, got {type(block_size).__name__}")
    if block_size < 1:
        raise ValueError(f"block_size must be >= 1, got {block_size}")
    if (
        not isinstance(val_fraction, Real)
        or isinstance(val_fraction, bool)
        or not 0 < val_fraction < 1
    ):
        raise ValueError(
            f"val_fraction must be a number strictly between 0 and 1, got {val_fraction!r}"
        )
    file = SHAKESPEARE_PATH if path is None else Path(path)
    try:
        raw = gzip.decompress(file.read_bytes())
    except FileNotFoundError:
        raise FileNotFoundError(
            f"tiny Shakespeare file {str(file)!r} is missing; minimp ships it as package "
            "data (minimp/datasets/tinyshakespeare.txt.gz): reinstall minimp"
        ) from None
    except (OSError, EOFError) as err:
        raise ValueError(f"tiny Shakespeare file {str(file)!r} is not valid gzip: {err}") from None
    digest = hashlib.md5(raw).hexdigest()
    if digest != SHAKESPEARE_MD5:
        raise ValueError(
            f"tiny Shakespeare file {str(file)!r} is corrupt: the text's md5 is {digest}, "
            f"expected {SHAKESPEARE_MD5}; reinstall minimp"
        )
    text = raw.decode("utf-8")
    chars = "".join(sorted(set(text)))
    lookup = np.zeros(max(map(ord, chars)) + 1, dtype=np.int64)
    lookup[[ord(c) for c in chars]] = np.arange(len(chars))
    ids = lookup[np.frombuffer(raw, dtype=np.uint8)]  # the text is ASCII: one byte each
    n_train = int(len(ids) * (1 - val_fraction))
    train, val = ids[:n_train], ids[n_train:]
    if min(len(train), len(val)) <= block_size:
        raise ValueError(
            f"block_size={block_size} leaves no full window in a split of "
            f"{min(len(train), len(val))} characters; use a smaller block_size or val_fraction"
        )
    return CharCorpus(train, val, chars, int(block_size))
