"""minimp.anomaly names the first op whose output (forward) or input gradient
(backward) became inf or NaN, as torch.autograd.detect_anomaly does for backward."""

import sys

import numpy as np
import pytest

import minimp
from minimp import nn, tensor
from minimp.anomaly import detect_anomaly


def _overflowing_mlp():
    model = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2)).half()
    model.layers[2].weight.data[:] = np.float16(1000.0)  # 4 inputs of 100 * 1000 > 65504
    return model


def test_it_finds_a_planted_overflow_in_forward_and_names_op_module_shape_and_input():
    model = _overflowing_mlp()
    model.layers[0].weight.data[:] = np.float16(25.0)
    model.layers[0].bias.data[:] = np.float16(0.0)
    x = tensor(np.ones((3, 4)), dtype=minimp.float16)
    with detect_anomaly(model) as found:
        out = model(x)
    assert not np.isfinite(out.numpy()).all()
    first = found.first
    assert (first.phase, first.op, first.module) == ("forward", "linear", "layers.2")
    assert first.shape == (3, 2) and first.dtype == "float16" and first.kind == "inf"
    assert first.largest_finite_input == 1000.0  # the weight; the activations are 100
    assert "linear" in str(first) and "layers.2" in str(first)


def test_it_finds_an_overflow_in_backward_that_forward_did_not_have():
    """A loss scale of 2^16 on a float16 loss: the forward is finite, the gradient of
    the scaled loss rounds to inf (65536 > 65504) in the backward of the multiply."""
    w = tensor(np.full(8, 1e-3, np.float32), requires_grad=True)
    with detect_anomaly() as found:
        loss = (w.half().sum() * 65536.0).sum()
        assert np.isfinite(loss.item())
        loss.backward()
    first = found.first
    assert first.phase == "backward" and first.op == "mul" and first.kind == "inf"
    assert first.shape == () and first.largest_finite_input == 1.0  # the seed gradient
    assert not np.isfinite(w.grad.numpy()).all()


def test_a_finite_run_finds_nothing_and_the_hook_is_removed_on_exit():
    tensor_module = sys.modules["minimp.tensor"]  # the module (minimp.tensor is the function)
    model = nn.Sequential(nn.Linear(4, 2))
    with detect_anomaly(model) as found:
        model(tensor(np.ones((2, 4)))).sum().backward()
    assert found.first is None
    assert tensor_module.set_anomaly_hook(None) is None


def test_nan_made_from_finite_inputs_is_found_where_it_is_made():
    a = tensor(np.array([0.0, 1.0], np.float32))
    with detect_anomaly() as found:
        (a / a).sum()
    assert (found.first.op, found.first.kind) == ("div", "nan")


def test_it_refuses_a_non_module():
    with pytest.raises(TypeError, match="Module"):
        detect_anomaly(model=3)


def test_a_causal_mask_is_not_an_anomaly_but_a_nan_after_it_is():
    scores = tensor(np.zeros((2, 2), np.float32))
    future = np.triu(np.ones((2, 2), bool), k=1)
    with detect_anomaly() as found:
        masked = scores.masked_fill(future, -np.inf)
    assert found.first is None
    with detect_anomaly() as found:
        masked * 0.0  # -inf * 0 is NaN
    assert (found.first.op, found.first.kind, found.first.inputs_finite) == ("mul", "nan", False)
