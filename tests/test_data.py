"""Tests for minimp.data: the shipped digits, the synthetic task, minibatches, validation."""

import dataclasses
import gzip
import hashlib

import numpy as np
import pytest

from minimp import data
from minimp.data import Dataset, batches, load_digits

# Images per class 0..9 in sklearn.datasets.load_digits (checked against
# scikit-learn 1.9.1 when the file was made).
DIGITS_COUNTS = [178, 182, 177, 183, 181, 182, 181, 179, 174, 180]
# The first and last images of the set, copied from scikit-learn.
DIGITS_FIRST = [0, 0, 5, 13, 9, 1, 0, 0, 0, 0, 13, 15, 10, 15, 5, 0, 0, 3, 15, 2, 0, 11, 8, 0,
                0, 4, 12, 0, 0, 8, 8, 0, 0, 5, 8, 0, 0, 9, 8, 0, 0, 4, 11, 0, 1, 12, 7, 0,
                0, 2, 14, 5, 10, 12, 0, 0, 0, 0, 6, 13, 10, 0, 0, 0]  # fmt: skip
DIGITS_LAST = [0, 0, 10, 14, 8, 1, 0, 0, 0, 2, 16, 14, 6, 1, 0, 0, 0, 0, 15, 15, 8, 15, 0, 0,
               0, 0, 5, 16, 16, 10, 0, 0, 0, 0, 12, 15, 15, 12, 0, 0, 0, 4, 16, 6, 4, 16, 6, 0,
               0, 8, 16, 10, 8, 16, 8, 0, 0, 1, 8, 12, 14, 12, 1, 0]  # fmt: skip


def _sorted_rows(a):
    return a[np.lexsort(a.T[::-1])]


# --- the shipped file -------------------------------------------------------------------


def test_shipped_file_matches_recorded_checksum_and_sklearn():
    raw = data.DIGITS_PATH.read_bytes()
    assert hashlib.sha256(raw).hexdigest() == data.DIGITS_SHA256
    with np.load(data.DIGITS_PATH, allow_pickle=False) as npz:
        assert sorted(npz.files) == ["images", "labels"]
        images, labels = npz["images"], npz["labels"]
    assert images.dtype == np.uint8 and images.shape == (1797, 64)
    assert labels.dtype == np.uint8 and labels.shape == (1797,)
    assert images.min() == 0 and images.max() == 16
    assert np.bincount(labels).tolist() == DIGITS_COUNTS
    assert int(images.sum(dtype=np.int64)) == 561718
    assert images[0].tolist() == DIGITS_FIRST and labels[0] == 0
    assert images[-1].tolist() == DIGITS_LAST and labels[-1] == 8
    assert labels[:10].tolist() == list(range(10))


def test_digits_shapes_dtypes_range():
    ds = load_digits()
    assert ds.name == "digits" and ds.n_classes == 10 and ds.n_features == 64
    assert ds.x_train.shape == (1438, 64) and ds.x_test.shape == (359, 64)
    assert ds.x_train.dtype == ds.x_test.dtype == np.float32
    assert ds.y_train.dtype == ds.y_test.dtype == np.int64
    x = np.concatenate([ds.x_train, ds.x_test])
    assert x.min() == 0.0 and x.max() == 1.0
    # pixel / 16, exactly, and therefore exact in float16 as well
    assert np.array_equal(x * 16, np.round(x * 16))
    assert np.array_equal(x.astype(np.float16).astype(np.float32), x)
    assert "digits" in repr(ds) and "(1438, 64)" in repr(ds)


def test_digits_split_is_a_stratified_partition_of_the_file():
    ds = load_digits(test_fraction=0.2, seed=0)
    assert np.bincount(ds.y_train, minlength=10).tolist() == [
        n - round(0.2 * n) for n in DIGITS_COUNTS
    ]
    assert np.bincount(ds.y_test, minlength=10).tolist() == [round(0.2 * n) for n in DIGITS_COUNTS]
    with np.load(data.DIGITS_PATH) as npz:
        file_rows = np.column_stack([npz["images"], npz["labels"]]).astype(np.int64)
    split_rows = np.column_stack(
        [
            np.concatenate([ds.x_train, ds.x_test]) * 16,
            np.concatenate([ds.y_train, ds.y_test]),
        ]
    ).astype(np.int64)
    assert np.array_equal(_sorted_rows(split_rows), _sorted_rows(file_rows))


def test_digits_split_is_deterministic_and_depends_on_seed():
    a, b, c = load_digits(seed=3), load_digits(seed=3), load_digits(seed=4)
    for field in ("x_train", "y_train", "x_test", "y_test"):
        assert np.array_equal(getattr(a, field), getattr(b, field))
    assert not np.array_equal(a.x_test, c.x_test)
    assert np.bincount(a.y_test).tolist() == np.bincount(c.y_test).tolist()
    # pinned for seed 0, so a change to the split (and to every number a lesson
    # prints from it) shows up here
    ds = load_digits()
    assert ds.y_test[:12].tolist() == [0, 7, 4, 0, 2, 3, 7, 8, 0, 9, 4, 5]
    assert int((ds.x_test * 16).sum()) == 112478


def test_digits_test_fraction_sets_the_test_size():
    ds = load_digits(test_fraction=0.5)
    assert len(ds.y_test) == sum(round(0.5 * n) for n in DIGITS_COUNTS)
    assert len(ds.y_train) + len(ds.y_test) == 1797


@pytest.mark.parametrize("bad", [0, 1, -0.1, 1.5, float("nan"), float("inf"), "0.2", None, True])
def test_digits_rejects_bad_test_fraction(bad):
    with pytest.raises(ValueError, match="test_fraction"):
        load_digits(test_fraction=bad)


def test_digits_rejects_a_fraction_that_empties_a_part():
    with pytest.raises(ValueError, match="at least one row"):
        load_digits(test_fraction=0.001)


@pytest.mark.parametrize("bad", [None, -1, 1.5, "0"])
def test_digits_rejects_bad_seed(bad):
    with pytest.raises(ValueError, match="seed"):
        load_digits(seed=bad)


# --- the checksum ------------------------------------------------------------------------


def test_exact_copy_loads_from_a_path(tmp_path):
    copy = tmp_path / "digits.npz"
    copy.write_bytes(data.DIGITS_PATH.read_bytes())
    a, b = load_digits(path=copy), load_digits()
    assert np.array_equal(a.x_train, b.x_train) and np.array_equal(a.y_test, b.y_test)


def test_corrupted_copy_is_refused_naming_the_file(tmp_path):
    raw = bytearray(data.DIGITS_PATH.read_bytes())
    raw[len(raw) // 2] ^= 0x01
    bad = tmp_path / "corrupt_digits.npz"
    bad.write_bytes(bytes(raw))
    with pytest.raises(ValueError, match=r"corrupt_digits\.npz.*corrupt.*SHA-256"):
        load_digits(path=bad)


def test_valid_npz_with_other_content_is_refused(tmp_path):
    with np.load(data.DIGITS_PATH) as npz:
        images, labels = npz["images"].copy(), npz["labels"].copy()
    labels[0] = 1  # one wrong label: still a perfectly loadable file
    other = tmp_path / "relabelled.npz"
    np.savez_compressed(other, images=images, labels=labels)
    with pytest.raises(ValueError, match=r"relabelled\.npz"):
        load_digits(path=other)


def test_missing_file_is_reported_by_name(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"nowhere\.npz"):
        load_digits(path=tmp_path / "nowhere.npz")


# --- Dataset and batches -----------------------------------------------------------------


def _arrays(n=10, d=3):
    """Features whose column 0 is the row index, so a batch tells which rows it holds."""
    rng = np.random.default_rng(0)
    x = rng.random((n, d), dtype=np.float32)
    x[:, 0] = np.arange(n)
    return x, rng.integers(0, 2, n)


def test_dataset_is_frozen():
    x, y = _arrays()
    ds = Dataset(x, y, x, y, "toy", 2)
    with pytest.raises(dataclasses.FrozenInstanceError):
        ds.x_train = x


def test_dataset_counts_nan_and_inf_and_names_the_array():
    x, y = _arrays()
    bad = x.copy()
    bad[1, 0] = np.nan
    bad[1, 2] = np.nan
    bad[4, 1] = np.inf
    bad[5, 1] = -np.inf
    with pytest.raises(ValueError, match=r"x_test contains 2 NaN and 2 inf values \(in 3 of 10"):
        Dataset(x, y, bad, y, "toy", 2)


@pytest.mark.parametrize(
    ("args", "match"),
    [
        (lambda x, y: (x, y[:-1], x, y), "x_train has 10 rows but y_train has 9"),
        (lambda x, y: (x, y, x[:, :2], y), "features"),
        (lambda x, y: (x, y + 5, x, y), "y_train holds labels from 5"),
        (lambda x, y: (x, y.astype(np.float32), x, y), "y_train must be a 1-D integer"),
        (lambda x, y: (x.ravel(), y, x, y), "x_train must be a 2-D floating"),
        (lambda x, y: (x.astype(np.int64), y, x, y), "x_train must be a 2-D floating"),
    ],
)
def test_dataset_rejects_inconsistent_arrays(args, match):
    x, y = _arrays()
    with pytest.raises(ValueError, match=match):
        Dataset(*args(x, y), "toy", 2)


# --- batches -----------------------------------------------------------------------------


def test_batches_keep_the_last_partial_batch_by_default():
    x, y = _arrays(n=10)
    got = list(batches(x, y, 4, np.random.default_rng(0)))
    assert [len(b) for _, b in got] == [4, 4, 2]
    idx = np.concatenate([xb[:, 0] for xb, _ in got]).astype(int)
    assert sorted(idx.tolist()) == list(range(10))  # every sample exactly once
    assert idx.tolist() != list(range(10))  # and shuffled
    for xb, yb in got:
        assert np.array_equal(xb, x[xb[:, 0].astype(int)])
        assert np.array_equal(yb, y[xb[:, 0].astype(int)])  # features and labels stay paired


def test_batches_drop_last():
    x, y = _arrays(n=10)
    assert [len(b) for _, b in batches(x, y, 4, np.random.default_rng(0), drop_last=True)] == [4, 4]
    assert [len(b) for _, b in batches(x, y, 5, None, drop_last=True)] == [5, 5]


def test_batches_without_rng_keep_order():
    x, y = _arrays(n=7)
    xs = np.concatenate([xb for xb, _ in batches(x, y, 3)])
    assert np.array_equal(xs, x)


def test_batches_are_deterministic_and_epochs_differ():
    x, y = _arrays(n=50)
    first = [yb.tolist() for _, yb in batches(x, y, 8, np.random.default_rng(7))]
    again = [yb.tolist() for _, yb in batches(x, y, 8, np.random.default_rng(7))]
    assert first == again
    rng = np.random.default_rng(7)
    e1 = np.concatenate([xb for xb, _ in batches(x, y, 8, rng)])
    e2 = np.concatenate([xb for xb, _ in batches(x, y, 8, rng)])
    assert not np.array_equal(e1, e2)


def test_batches_draw_the_permutation_at_call_time():
    x, y = _arrays(n=20)
    rng = np.random.default_rng(1)
    it = batches(x, y, 5, rng)
    state = rng.bit_generator.state
    list(it)
    assert rng.bit_generator.state == state


@pytest.mark.parametrize(
    ("kwargs", "err", "match"),
    [
        ({"batch_size": 0}, ValueError, "batch_size"),
        ({"batch_size": 2.0}, TypeError, "batch_size"),
        ({"rng": 0}, TypeError, "default_rng"),
        ({"y": np.zeros(9, dtype=np.int64)}, ValueError, "x has 10 rows but y has 9"),
    ],
)
def test_batches_validate_before_touching_the_rng(kwargs, err, match):
    x, y = _arrays()
    args = {"x": x, "y": y, "batch_size": 4, "rng": np.random.default_rng(0)} | kwargs
    rng = args["rng"]
    state = rng.bit_generator.state if isinstance(rng, np.random.Generator) else None
    with pytest.raises(err, match=match):
        batches(**args)  # raises at call time, not at the first next()
    if state is not None:
        assert rng.bit_generator.state == state


def test_batches_refuse_nan_and_leave_inputs_unchanged():
    x, y = _arrays()
    x[3, 1] = np.nan
    before = x.copy()
    rng = np.random.default_rng(0)
    state = rng.bit_generator.state
    with pytest.raises(ValueError, match=r"x contains 1 NaN and 0 inf .*np\.isfinite\(x\)"):
        batches(x, y, 4, rng)
    assert np.array_equal(x, before, equal_nan=True)
    assert rng.bit_generator.state == state


# --- tiny Shakespeare (issue 13) ------------------------------------------------------


def test_shipped_shakespeare_is_char_rnns_text():
    """The md5 char-rnn's input.txt has, recomputed here from the shipped .gz."""
    text = gzip.decompress(data.SHAKESPEARE_PATH.read_bytes())
    assert len(text) == 1_115_394
    assert hashlib.md5(text).hexdigest() == "6fb458f1232090904fb40fe944165e91"
    assert text.startswith(b"First Citizen:\nBefore we proceed any further, hear me speak.")


def test_load_shakespeare_vocabulary_and_90_10_split():
    corpus = data.load_shakespeare(block_size=32)
    assert corpus.vocab_size == 65 and corpus.chars[:3] == "\n !" and corpus.chars[-1] == "z"
    assert len(corpus.train) == 1_003_854 and len(corpus.val) == 111_540  # int(0.9 * n)
    assert corpus.train.dtype == np.int64
    assert corpus.decode(corpus.train[:14]) == "First Citizen:"
    assert np.array_equal(corpus.encode("First Citizen:"), corpus.train[:14])
    full = corpus.decode(np.concatenate([corpus.train, corpus.val]))
    assert full.encode() == gzip.decompress(data.SHAKESPEARE_PATH.read_bytes())


def test_shakespeare_batches_are_seeded_next_character_windows():
    corpus = data.load_shakespeare(block_size=16)
    x, y = corpus.batch("train", 8, np.random.default_rng(0))
    x2, y2 = corpus.batch("train", 8, np.random.default_rng(0))
    assert x.shape == y.shape == (8, 16) and x.dtype == np.int64
    assert np.array_equal(x, x2) and np.array_equal(y, y2)
    assert np.array_equal(x[:, 1:], y[:, :-1])  # y is x shifted by one character
    vx, _ = corpus.batch("val", 4, np.random.default_rng(0))
    text = corpus.decode(corpus.val)
    assert all(corpus.decode(row) in text for row in vx)  # windows come from the split
    rng = np.random.default_rng(0)
    state = rng.bit_generator.state
    with pytest.raises(ValueError, match="'train' or 'val'"):
        corpus.batch("test", 8, rng)
    with pytest.raises(TypeError, match="Generator"):
        corpus.batch("train", 8, 0)
    assert rng.bit_generator.state == state  # a refused call draws nothing


def test_load_shakespeare_refuses_bad_arguments_and_a_corrupt_file(tmp_path):
    with pytest.raises(ValueError, match="val_fraction"):
        data.load_shakespeare(val_fraction=1.0)
    with pytest.raises(ValueError, match="block_size"):
        data.load_shakespeare(block_size=0)
    bad = tmp_path / "bad.txt.gz"
    bad.write_bytes(gzip.compress(b"Not Shakespeare"))
    with pytest.raises(ValueError, match="corrupt"):
        data.load_shakespeare(path=bad)
    with pytest.raises(FileNotFoundError, match="missing"):
        data.load_shakespeare(path=tmp_path / "absent.gz")
