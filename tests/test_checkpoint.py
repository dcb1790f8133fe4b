"""Checkpoints under bad input: every tampered file is refused with CheckpointError and
leaves the run bit for bit as it was; a good file loads identical content (issue 16)."""

import io
import json
import math
import os
import time
import tracemalloc
import zipfile

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from minimp import checkpoint, data
from minimp.checkpoint import CheckpointError
from minimp.train import Run, TrainConfig

DIGITS = data.load_digits()
SHORT = TrainConfig(steps=6, eval_every=3, batch_size=32, sizes=(64, 16, 10))
SHORT_ADAM = TrainConfig(
    steps=6, eval_every=3, batch_size=32, sizes=(64, 16, 10), optimizer="adam", lr=1e-3
)


def _canonical(value):
    """A comparable form of nested state: arrays by dtype, shape and bits; floats by repr
    (so NaN equals NaN)."""
    if isinstance(value, np.ndarray | np.generic):
        a = np.asarray(value)
        return ("array", str(a.dtype), a.shape, a.tobytes())
    if isinstance(value, dict):
        return tuple(sorted((str(k), _canonical(v)) for k, v in value.items()))
    if isinstance(value, list | tuple):
        return tuple(_canonical(v) for v in value)
    if isinstance(value, float):
        return repr(value)
    return value


def state_of(run: Run):
    """Everything a load could change: weights, masters, optimizer state and settings
    (its generator included), scaler state and history, fp8 scales, the run's history."""
    return _canonical(
        {
            "model": run.model.state_dict(),
            "grads": [None if p.grad is None else p.grad.data for p in run.model.parameters()],
            "masters": run.masters.state_dict() if run.masters else None,
            "optimizer": run.optimizer.state_dict(),
            "scaler": run.scaler.state_dict(),
            "scale_history": [
                vars(r) if hasattr(r, "__dict__") else repr(r) for r in run.scaler.history
            ],
            "history": run.history.to_dict(),
            "steps_done": run.steps_done,
            "fp8": [layer.scaling_state() for layer in run.fp8_layers()],
        }
    )


def _saved(tmp_path, regime="mixed-dynamic", config=SHORT, steps=4, name="ck.npz"):
    run = Run(regime, DIGITS, config)
    run.train(steps)
    path = tmp_path / name
    run.save(path)
    return run, path


def _other(regime="mixed-dynamic", config=SHORT, steps=1):
    """A run of the same regime and config in another state: a load must change it."""
    run = Run(regime, DIGITS, config)
    run.train(steps)
    return run


def _members(path) -> dict[str, bytes]:
    with zipfile.ZipFile(path) as z:
        return {name: z.read(name) for name in z.namelist()}


def _write(path, members: dict[str, bytes], compression=zipfile.ZIP_STORED, keep_digest=False):
    """Write the archive; by default as a hand-made file: without the digest, so that
    the structure checks are what refuses it."""
    meta = _meta(members) if "meta.json.npy" in members else None
    if not keep_digest and isinstance(meta, dict):
        meta.pop("digest", None)
        members = dict(members)
        members["meta.json.npy"] = _npy(np.frombuffer(json.dumps(meta).encode(), np.uint8))
    with zipfile.ZipFile(path, "w", compression) as z:
        for name, content in members.items():
            z.writestr(name, content)


def _meta(members) -> dict:
    return json.loads(np.load(io.BytesIO(members["meta.json.npy"])).tobytes().decode())


def _npy(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


def _edit_meta(path, edit) -> None:
    members = _members(path)
    meta = _meta(members)
    meta.pop("digest")  # a hand-edited file: its structure alone is checked
    edit(meta)
    members["meta.json.npy"] = _npy(np.frombuffer(json.dumps(meta).encode(), np.uint8))
    _write(path, members)


def _refused(path, run, *words, **kwargs):
    before = state_of(run)
    with pytest.raises(CheckpointError) as err:
        run.load(path, **kwargs)
    assert state_of(run) == before, "a refused load changed the run"
    for word in words:
        assert word in str(err.value), (word, str(err.value))
    return err.value


def test_an_edit_that_leaves_a_well_formed_file_is_caught_by_the_digest(tmp_path):
    _, path = _saved(tmp_path)
    members = _members(path)
    meta = _meta(members)
    meta["extra"]["history"]["loss"][1] = 0.5  # a plausible value
    members["meta.json.npy"] = _npy(np.frombuffer(json.dumps(meta).encode(), np.uint8))
    _write(path, members, keep_digest=True)
    _refused(path, _other(), "digest")


def test_a_good_checkpoint_loads_identical_content(tmp_path):
    saved, path = _saved(tmp_path)
    run = _other()
    run.load(path)
    assert state_of(run) == state_of(saved)


# ---- item 2: nothing is applied before everything is checked -------------------------


def _drop(key):
    return lambda meta: meta["extra"].pop(key)


HALF_LOADS = {
    "history with an unknown key": (lambda m: m["extra"]["history"].update(bogus=[1]), "bogus"),
    "no history": (_drop("history"), "history"),
    "a bad scale_history entry": (
        lambda m: m["extra"]["scale_history"].__setitem__(0, {"step": 0}),
        "scale_history",
    ),
    "no steps_done": (_drop("steps_done"), "steps_done"),
    "no scale_history": (_drop("scale_history"), "scale_history"),
    "no config": (_drop("config"), "config"),
    "no regime": (_drop("regime"), "regime"),
}


@pytest.mark.parametrize("case", list(HALF_LOADS))
def test_a_bad_extra_is_refused_before_anything_is_loaded(tmp_path, case):
    edit, word = HALF_LOADS[case]
    _, path = _saved(tmp_path)
    _edit_meta(path, edit)
    _refused(path, _other(), word)


# ---- item 3: steps, history and settings in the file are validated ------------------


def _set_extra(key, value):
    return lambda meta: meta["extra"].__setitem__(key, value)


def _set_group(key, value):
    return lambda meta: meta["optimizer"]["param_groups"][0].__setitem__(key, value)


def _set_history(key, value):
    return lambda meta: meta["extra"]["history"].__setitem__(key, value)


SETTINGS = {
    "steps_done '5'": (_set_extra("steps_done", "5"), ["steps_done", "'5'", ">= 0"]),
    "steps_done -3": (_set_extra("steps_done", -3), ["steps_done", "-3", ">= 0"]),
    "steps_done 2.5": (_set_extra("steps_done", 2.5), ["steps_done", "2.5"]),
    "steps_done true": (_set_extra("steps_done", True), ["steps_done", "True"]),
    "a string loss history": (_set_history("loss", "abc"), ["loss", "'abc'"]),
    "a loss history of strings": (_set_history("loss", ["a"] * 4), ["loss"]),
    "history lengths disagree": (_set_history("scale", [1.0]), ["scale", "length"]),
    "history for another regime": (_set_history("regime", "fp32"), ["regime", "fp32"]),
    "lr 'abc'": (_set_group("lr", "abc"), ["lr", "'abc'"]),
    "lr -100": (_set_group("lr", -100), ["lr", "-100"]),
    "momentum null": (_set_group("momentum", None), ["momentum", "None"]),
    "nesterov-like unknown setting": (_set_group("nesterov", True), ["nesterov"]),
    "update_rounding changed": (_set_group("update_rounding", "kahan"), ["update_rounding"]),
    "config lr changed": (
        lambda m: m["extra"]["config"].__setitem__("lr", 0.5),
        ["config"],
    ),
    "config batch '64'": (
        lambda m: m["extra"]["config"].__setitem__("batch_size", "64"),
        ["batch_size", "'64'"],
    ),
    "config unknown key": (lambda m: m["extra"]["config"].__setitem__("bogus", 1), ["bogus"]),
    "a negative counter": (
        lambda m: m["optimizer"]["counters"].__setitem__("0/step", -3),
        ["0/step", "-3"],
    ),
}


@pytest.mark.parametrize("case", list(SETTINGS))
def test_bad_settings_in_the_file_are_refused_with_their_name_and_value(tmp_path, case):
    edit, words = SETTINGS[case]
    _, path = _saved(tmp_path)
    _edit_meta(path, edit)
    _refused(path, _other(), *words)


ADAM_SETTINGS = {
    "betas (2.0, 0.9)": (_set_group("betas", [2.0, 0.9]), ["betas", "2.0"]),
    "three betas": (_set_group("betas", [0.9, 0.99, 0.9]), ["betas"]),
    "eps None": (_set_group("eps", None), ["eps", "None"]),
    "step -3": (lambda m: m["optimizer"]["counters"].__setitem__("0/step", -3), ["step", "-3"]),
    "step 2.5": (lambda m: m["optimizer"]["counters"].__setitem__("0/step", 2.5), ["step", "2.5"]),
}


@pytest.mark.parametrize("case", list(ADAM_SETTINGS))
def test_bad_adam_settings_are_refused(tmp_path, case):
    edit, words = ADAM_SETTINGS[case]
    _, path = _saved(tmp_path, config=SHORT_ADAM)
    _edit_meta(path, edit)
    _refused(path, _other(config=SHORT_ADAM), *words)


def test_a_removed_optimizer_state_is_refused_not_silently_reset(tmp_path):
    _, path = _saved(tmp_path, regime="fp32")
    members = _members(path)
    meta = _meta(members)
    for key in [k for k in meta["dtypes"] if k.startswith("optimizer/")]:
        del meta["dtypes"][key], members[f"{key}.npy"]
    members["meta.json.npy"] = _npy(np.frombuffer(json.dumps(meta).encode(), np.uint8))
    _write(path, members)
    _refused(path, _other("fp32"), "optimizer", "momentum_buffer")
    # and one parameter's state removed
    _, path = _saved(tmp_path, regime="fp32", name="one.npz")
    members = _members(path)
    meta = _meta(members)
    del meta["dtypes"]["optimizer/1/momentum_buffer"], members["optimizer/1/momentum_buffer.npy"]
    members["meta.json.npy"] = _npy(np.frombuffer(json.dumps(meta).encode(), np.uint8))
    _write(path, members)
    _refused(path, _other("fp32"), "optimizer", "parameter 1")


def test_update_rounding_changed_inside_a_bf16_sr_file_is_refused(tmp_path):
    _, path = _saved(tmp_path, regime="bf16-sr")
    _edit_meta(path, _set_group("update_rounding", "nearest"))
    _refused(path, _other("bf16-sr"), "update_rounding", "'nearest'", "'stochastic'")


# ---- item 12: malformed metadata is a CheckpointError, never a raw traceback ---------


def _set_top(key, value):
    return lambda meta: meta.__setitem__(key, value)


MALFORMED = {
    "no dtypes": lambda m: m.pop("dtypes"),
    "no extra": lambda m: m.pop("extra"),
    "no format": lambda m: m.pop("format"),
    "a list for the optimizer": _set_top("optimizer", []),
    "a list for the scaler": _set_top("scaler", []),
    "a list for dtypes": _set_top("dtypes", []),
    "a list for extra": _set_top("extra", []),
    "a string for param_groups": lambda m: m["optimizer"].__setitem__("param_groups", "x"),
    "no counters": lambda m: m["optimizer"].pop("counters"),
    "a float counter": lambda m: m["optimizer"]["counters"].__setitem__("0/x", 2.5),
    "a counter for parameter 99": lambda m: m["optimizer"]["counters"].__setitem__("99/x", 1),
    "a counter key without a slash": lambda m: m["optimizer"]["counters"].__setitem__("x", 1),
    "an unknown dtype": lambda m: m["dtypes"].__setitem__("model/layers.0.weight", "int64"),
    "a dtype that disagrees": lambda m: m["dtypes"].__setitem__("model/layers.0.weight", "float32"),
    "an unknown section": lambda m: m["dtypes"].__setitem__("bogus/x", "float32"),
    "a string for fp8 state": _set_extra("fp8_scaling", "abc"),
    "fp8 state for a non-fp8 run": _set_extra("fp8_scaling", [{"input.scale": 1.0}]),
    "an unknown top-level key": _set_top("bogus", 1),
    "the meta is a list": None,
}


@pytest.mark.parametrize("case", list(MALFORMED))
def test_malformed_metadata_is_a_checkpoint_error(tmp_path, case):
    _, path = _saved(tmp_path)
    if MALFORMED[case] is None:
        members = _members(path)
        members["meta.json.npy"] = _npy(np.frombuffer(b"[1, 2]", np.uint8))
        _write(path, members)
    else:
        _edit_meta(path, MALFORMED[case])
    _refused(path, _other())


def test_wrong_typed_fp8_state_is_a_checkpoint_error(tmp_path):
    _, path = _saved(tmp_path, regime="fp8")
    for i, bad in enumerate(["abc", [{"input.scale": "a"}] * 3, [[1, 2]] * 3, None]):
        copy = tmp_path / f"fp8-{i}.npz"
        copy.write_bytes(path.read_bytes())
        _edit_meta(copy, _set_extra("fp8_scaling", bad))
        _refused(copy, _other("fp8"), "fp8")


def test_a_0d_bfloat16_member_and_a_flipped_npy_header_byte_are_checkpoint_errors(tmp_path):
    _, path = _saved(tmp_path, regime="bf16")
    members = _members(path)
    members["model/layers.0.bias.npy"] = _npy(np.array(7, np.uint16))
    _write(path, members)
    _refused(path, _other("bf16"), "layers.0.bias", "[]", "[16]")
    _, path = _saved(tmp_path, name="flip.npz")
    members = _members(path)
    name = "model/layers.0.weight.npy"
    for offset in range(0, 40, 3):  # magic, version, header length and the dict itself
        content = bytearray(members[name])
        content[offset] ^= 0x20
        tampered = dict(members, **{name: bytes(content)})
        _write(path, tampered)
        _refused(path, _other())


# ---- item 5: no bomb is inflated, the file is read once ------------------------------


def _add_bomb(path, gib: float = 0.25) -> None:
    """An unreferenced member of `gib` GiB of zeros, deflated to about a thousandth."""
    with (
        zipfile.ZipFile(path, "a", zipfile.ZIP_DEFLATED) as z,
        z.open("bomb.npy", "w", force_zip64=True) as f,
    ):
        chunk = bytes(1 << 24)
        for _ in range(int(gib * 64)):
            f.write(chunk)


def test_an_unreferenced_bomb_is_refused_at_once_without_inflating(tmp_path):
    _, path = _saved(tmp_path)
    _add_bomb(path)
    assert path.stat().st_size < 8 << 20
    run = _other()
    tracemalloc.start()
    start = time.perf_counter()
    _refused(path, run, "bomb.npy")
    elapsed = time.perf_counter() - start
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert elapsed < 0.5, elapsed
    assert peak < 32 << 20, peak


def test_a_compressed_member_is_refused(tmp_path):
    _, path = _saved(tmp_path)
    _write(path, _members(path), compression=zipfile.ZIP_DEFLATED)
    _refused(path, _other(), "compressed")


def test_a_huge_declared_shape_is_refused_from_its_header(tmp_path):
    _, path = _saved(tmp_path)
    members = _members(path)
    name = "model/layers.0.weight.npy"
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        header, {"descr": "<f2", "fortran_order": False, "shape": (10**12,)}
    )
    members[name] = header.getvalue() + members[name][128:]
    _write(path, members)
    start = time.perf_counter()
    _refused(path, _other(), "model/layers.0.weight", "1000000000000")
    assert time.perf_counter() - start < 0.5


def test_peek_and_load_read_the_file_once(tmp_path):
    """What is checked is what is loaded: a file swapped in after the open is not read."""
    saved, path = _saved(tmp_path)
    contents = checkpoint.read(path)
    os.replace(_saved(tmp_path, steps=2, name="other.npz")[1], path)
    run = _other()
    run.load(contents)  # the contents read before the swap
    assert state_of(run) == state_of(saved)


# ---- item 6: save never follows a link, never leaves a temporary behind -------------


def test_save_leaves_a_symlink_at_the_old_temporary_path_alone(tmp_path):
    run = _other()
    target = tmp_path / "precious.txt"
    target.write_text("keep me")
    link = tmp_path / "ck.npz.partial"
    link.symlink_to(target)
    run.save(tmp_path / "ck.npz")
    assert target.read_text() == "keep me"
    assert link.is_symlink()
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "ck.npz",
        "ck.npz.partial",
        "precious.txt",
    ]
    fresh = _other(steps=2)
    fresh.load(tmp_path / "ck.npz")
    assert state_of(fresh) == state_of(run)


def test_saving_to_a_directory_fails_and_leaves_nothing_behind(tmp_path):
    run = _other()
    folder = tmp_path / "folder"
    folder.mkdir()
    with pytest.raises(IsADirectoryError, match="file name"):
        run.save(folder)
    assert list(tmp_path.iterdir()) == [folder] and list(folder.iterdir()) == []


def test_a_save_that_fails_midway_leaves_no_temporary_and_the_old_file(tmp_path):
    run, path = _saved(tmp_path)
    before = path.read_bytes()
    run.history.memory["x"] = object()  # not JSON: the save fails while writing
    with pytest.raises(TypeError):
        run.save(path)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["ck.npz"]


# ---- item 16: NaN and inf weights are refused unless asked for ----------------------


@pytest.mark.parametrize("bad", [math.nan, math.inf])
def test_nonfinite_weights_are_refused_unless_asked(tmp_path, bad):
    run = _other()
    weight = run.masters.masters[0]
    weight.data = weight.data.copy()
    weight.data[0, 0] = bad
    run.masters.copy_masters_to_model()
    path = tmp_path / "ck.npz"
    run.save(path)
    err = _refused(path, _other(steps=2), "layers.0.weight", "allow_nonfinite=True")
    assert "NaN or inf" in str(err)
    fresh = _other(steps=2)
    fresh.load(path, allow_nonfinite=True)
    assert state_of(fresh) == state_of(run)


# ---- the property: any corruption loads identically or is refused, changing nothing ---

_BASE: dict[str, object] = {}


def _base(tmp_path_factory):
    if not _BASE:
        folder = tmp_path_factory.mktemp("base")
        saved, path = _saved(folder, config=SHORT_ADAM)
        _BASE.update(saved=state_of(saved), bytes=path.read_bytes(), folder=folder)
    return _BASE


JSON_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-5, 10**6)
    | st.floats(allow_nan=True)
    | st.text(max_size=4),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3)
    ),
    max_leaves=6,
)


def _paths(value, prefix=()):
    yield prefix
    if isinstance(value, dict):
        for k, v in value.items():
            yield from _paths(v, (*prefix, k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from _paths(v, (*prefix, i))


CORRUPTIONS = st.one_of(
    st.tuples(st.just("truncate"), st.floats(0, 1)),
    st.tuples(st.just("flip"), st.floats(0, 1), st.integers(0, 7)),
    st.tuples(st.just("delete"), st.integers(0, 10**6)),
    st.tuples(st.just("edit"), st.integers(0, 10**6), JSON_VALUES),
    st.tuples(st.just("remove-key"), st.integers(0, 10**6)),
)

TRIED = {"count": 0, "refused": 0}


def _corrupt(original: bytes, corruption, path) -> None:
    kind = corruption[0]
    if kind == "truncate":
        path.write_bytes(original[: int(corruption[1] * (len(original) - 1))])
    elif kind == "flip":
        content = bytearray(original)
        content[int(corruption[1] * (len(content) - 1))] ^= 1 << corruption[2]
        path.write_bytes(bytes(content))
    else:
        path.write_bytes(original)
        members = _members(path)
        if kind == "delete":
            names = sorted(members)
            del members[names[corruption[1] % len(names)]]
            _write(path, members, keep_digest=True)
            return
        meta = _meta(members)
        paths = [p for p in _paths(meta) if p]
        where = paths[corruption[1] % len(paths)]
        parent = meta
        for key in where[:-1]:
            parent = parent[key]
        if kind == "edit":
            parent[where[-1]] = corruption[2]
        else:
            del parent[where[-1]]
        members["meta.json.npy"] = _npy(np.frombuffer(json.dumps(meta).encode(), np.uint8))
        _write(path, members, keep_digest=True)


@settings(
    max_examples=400, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(corruption=CORRUPTIONS)
def test_any_corruption_loads_identical_content_or_is_refused_changing_nothing(
    tmp_path_factory, corruption
):
    base = _base(tmp_path_factory)
    path = base["folder"] / "corrupt.npz"
    _corrupt(base["bytes"], corruption, path)
    run = _RUN.setdefault("run", _other(config=SHORT_ADAM))
    before = state_of(run)
    TRIED["count"] += 1
    try:
        run.load(path)
    except CheckpointError:
        TRIED["refused"] += 1
        assert state_of(run) == before
    else:
        assert state_of(run) == base["saved"]
        _RUN.pop("run")  # loaded: the next example needs a run in another state


_RUN: dict[str, Run] = {}
