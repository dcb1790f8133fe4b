"""minimp.fp8.block_linear / BlockLinear: each GEMM's operands quantized along its own
reduction axis, gradients exactly those of float32 GEMMs on the dequantized operands."""

import numpy as np
import pytest

import minimp
from minimp import data, nn
from minimp.fp8 import BlockLinear, Fp8Linear, block_linear, to_fp8
from minimp.memory import saved_arrays
from minimp.scaling import (
    DEEPSEEK_FP8,
    MXFP8,
    NVFP4_RECIPE,
    BlockScaling,
    DelayedScaling,
    quantize,
)
from minimp.scaling.accumulate import matmul as accumulated_matmul
from minimp.train import Run, TrainConfig

RECIPES = [MXFP8, NVFP4_RECIPE, DEEPSEEK_FP8]


def heavy_tailed(rng, shape):
    """Values over many binades, so that blocks get different scales."""
    return (rng.standard_normal(shape) * np.exp2(rng.uniform(-6, 6, shape))).astype(np.float32)


def bits(a):
    return np.asarray(a, np.float32).view(np.uint32)


def layer_grads(recipe, x, w, b, g):
    xt = minimp.tensor(x, requires_grad=True)
    wt = minimp.tensor(w, requires_grad=True)
    bt = minimp.tensor(b, requires_grad=True)
    out = block_linear(xt, wt, bt, recipe)
    out.backward(g)
    return out.numpy(), xt.grad.numpy(), wt.grad.numpy(), bt.grad.numpy()


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda r: r.name)
def test_gradients_are_float32_gemms_on_operands_quantized_along_each_reduction_axis(recipe):
    rng = np.random.default_rng(0)
    m, k, n = 256, 256, 128
    x, w, g = heavy_tailed(rng, (m, k)), heavy_tailed(rng, (n, k)), heavy_tailed(rng, (m, n))
    b = rng.standard_normal(n).astype(np.float32)
    out, dx, dw, db = layer_grads(recipe, x, w, b, g)

    def q(a, fmt, axis):
        return quantize(a, fmt, axis=axis).values

    expected_out = q(x, recipe.input, 1) @ q(w, recipe.weight, 1).T + b  # along K
    expected_dx = q(g, recipe.grad, 1) @ q(w, recipe.weight, 0)  # along N
    expected_dw = q(g, recipe.grad, 0).T @ q(x, recipe.input, 0)  # along M, the batch
    np.testing.assert_array_equal(bits(out), bits(expected_out))
    np.testing.assert_array_equal(bits(dx), bits(expected_dx))
    np.testing.assert_array_equal(bits(dw), bits(expected_dw))
    np.testing.assert_array_equal(bits(db), bits(g.sum(axis=0, dtype=np.float32)))


@pytest.mark.parametrize("recipe", [MXFP8, NVFP4_RECIPE], ids=lambda r: r.name)
def test_backward_does_not_reuse_the_forward_quantization(recipe):
    """W's forward blocks run along K, its dgrad blocks along N; x's forward blocks along
    K, its wgrad blocks along the batch. The forward's copies give other gradients."""
    rng = np.random.default_rng(1)
    x, w, g = heavy_tailed(rng, (64, 64)), heavy_tailed(rng, (64, 64)), heavy_tailed(rng, (64, 64))
    _, dx, dw, _ = layer_grads(recipe, x, w, np.zeros(64, np.float32), g)
    reused_w = quantize(w, recipe.weight, axis=1).values  # the forward's W
    reused_x = quantize(x, recipe.input, axis=1).values  # the forward's x
    assert not np.array_equal(dx, quantize(g, recipe.grad, axis=1).values @ reused_w)
    assert not np.array_equal(dw, quantize(g, recipe.grad, axis=0).values.T @ reused_x)


def test_square_weight_blocks_are_the_same_in_both_directions():
    """DeepSeek-V3's 128x128 weight blocks: the forward and the dgrad copy of W agree."""
    w = heavy_tailed(np.random.default_rng(2), (256, 128))
    fmt = DEEPSEEK_FP8.weight
    np.testing.assert_array_equal(quantize(w, fmt, axis=1).values, quantize(w, fmt, axis=0).values)


def test_backward_keeps_only_the_narrow_copies():
    """What the layer saves for backward: x and W column-wise, as fp8 elements (one byte)
    and E8M0 scales (one byte per 32 values), never the float32 arrays."""
    rng = np.random.default_rng(3)
    x = minimp.tensor(heavy_tailed(rng, (64, 128)))
    w = minimp.tensor(heavy_tailed(rng, (32, 128)), requires_grad=True)
    out = block_linear(x, w, None, MXFP8)
    saved = saved_arrays(out)
    assert sorted(str(a.dtype) for a in saved) == ["float8_e4m3fn", "float8_e8m0fnu"]
    assert sum(a.nbytes for a in saved) == 64 * 128 * (1 + 1 / 32)  # x only: x needs no dx


def test_a_3d_input_blocks_its_features_and_its_flattened_batch():
    rng = np.random.default_rng(4)
    x = heavy_tailed(rng, (4, 8, 64))
    w = heavy_tailed(rng, (32, 64))
    xt, wt = minimp.tensor(x, requires_grad=True), minimp.tensor(w, requires_grad=True)
    g = heavy_tailed(rng, (4, 8, 32))
    block_linear(xt, wt, None, MXFP8).backward(g)
    flat = layer_grads(MXFP8, x.reshape(32, 64), w, np.zeros(32, np.float32), g.reshape(32, 32))
    np.testing.assert_array_equal(xt.grad.numpy().reshape(32, 64), flat[1])
    np.testing.assert_array_equal(wt.grad.numpy(), flat[2])


def test_the_accumulator_setting_sums_every_gemm_as_it_says():
    recipe = BlockScaling("mxfp8-bf16-acc", *(MXFP8.input, MXFP8.weight, MXFP8.grad), "bfloat16")
    rng = np.random.default_rng(5)
    x, w, g = heavy_tailed(rng, (32, 64)), heavy_tailed(rng, (32, 64)), heavy_tailed(rng, (32, 32))
    out, _, dw, _ = layer_grads(recipe, x, w, np.zeros(32, np.float32), g)
    xq = quantize(x, MXFP8.input, axis=1).values
    wq = quantize(w, MXFP8.weight, axis=1).values
    expected = accumulated_matmul(xq, wq.T, "bfloat16")
    np.testing.assert_array_equal(bits(out), bits(expected))
    assert not np.array_equal(out, xq @ wq.T)  # a bfloat16 running sum is not float32's
    gq = quantize(g, MXFP8.grad, axis=0).values
    np.testing.assert_array_equal(
        bits(dw),
        bits(accumulated_matmul(gq.T, quantize(x, MXFP8.input, axis=0).values, "bfloat16")),
    )


@pytest.mark.parametrize(
    ("x_shape", "w_shape", "message"),
    [
        ((64, 48), (32, 48), "forward GEMM quantizes x .* 48 is not a multiple of 32"),
        ((40, 64), (32, 64), "wgrad GEMM quantizes x .* 40 is not a multiple of 32"),
        ((64, 64), (10, 64), "dgrad GEMM quantizes W .* 10 is not a multiple of 32"),
    ],
)
def test_shapes_not_divisible_by_the_block_are_refused_by_name(x_shape, w_shape, message):
    rng = np.random.default_rng(6)
    x = minimp.tensor(heavy_tailed(rng, x_shape), requires_grad=True)
    w = minimp.tensor(heavy_tailed(rng, w_shape), requires_grad=True)
    before = w.numpy().copy()
    with pytest.raises(ValueError, match=message):
        block_linear(x, w, None, MXFP8)
    assert np.array_equal(w.numpy(), before) and w.grad is None


def test_the_weights_128x128_blocks_need_both_axes_whole():
    x = minimp.tensor(np.ones((128, 128), np.float32))
    w = minimp.tensor(np.ones((64, 128), np.float32), requires_grad=True)
    with pytest.raises(ValueError, match="deepseek_128x128 blocks of 128 along axis 0"):
        block_linear(x, w, None, DEEPSEEK_FP8)


def test_to_fp8_makes_the_layer_each_recipe_asks_for_and_keeps_the_head():
    model = nn.MLP((64, 128, 128, 10), "relu", generator=np.random.default_rng(0))
    blocked = to_fp8(model, MXFP8)
    kinds = [type(layer).__name__ for layer in blocked.layers if layer.parameters()]
    assert kinds == ["BlockLinear", "BlockLinear", "Linear"]
    assert blocked.layers[0].weight is model.layers[0].weight  # shared: one optimizer
    assert isinstance(to_fp8(model, DelayedScaling()).layers[-1], Fp8Linear)
    with pytest.raises(TypeError, match="BlockLinear takes a BlockScaling"):
        BlockLinear(model.layers[0], DelayedScaling())
    with pytest.raises(TypeError, match="recipe must be"):
        to_fp8(model, "mxfp8")


@pytest.mark.parametrize("name", ["mxfp8", "nvfp4"])
def test_a_block_regime_trains_the_digits(name):
    run = Run(name, data.load_digits(), TrainConfig(steps=30, eval_every=30))
    assert next(type(la) for la in run.model.layers if la.parameters()) is BlockLinear
    history = run.train()
    assert np.isfinite(history.loss).all() and history.loss[-1] < history.loss[0]


def test_a_block_regime_resumes_from_a_checkpoint_bit_for_bit(tmp_path):
    """BlockLinear has no state of its own (every scale from the current values): the
    parameters and the optimizer are the whole checkpoint."""
    digits, config = data.load_digits(), TrainConfig(steps=6, eval_every=3)
    straight = Run("nvfp4", digits, config)
    straight.train()
    first = Run("nvfp4", digits, config)
    first.train(3)
    first.save(tmp_path / "run.npz")
    resumed = Run("nvfp4", digits, config)
    resumed.load(tmp_path / "run.npz")
    resumed.train()
    assert resumed.history.loss == straight.history.loss
    for p, q in zip(resumed.model.parameters(), straight.model.parameters(), strict=True):
        assert p.numpy().tobytes() == q.numpy().tobytes()


def test_to_fp8_converts_the_gpts_linears_but_its_head_and_leaves_the_model_as_it_was():
    from minimp.gpt import GPT, GPTConfig

    model = GPT(GPTConfig(block_size=8, n_layer=2, n_head=2, n_embd=32))
    converted = to_fp8(model, MXFP8)
    blocks = [m for m in (converted.blocks[0].attn.qkv, converted.blocks[1].mlp.fc)]
    assert all(isinstance(m, BlockLinear) for m in blocks)
    assert type(converted.lm_head) is nn.Linear  # 65 wide: the head stays float32
    assert type(model.blocks[0].attn.qkv) is nn.Linear  # the original is untouched
    assert converted.wte is model.wte  # modules without a Linear are the same objects
    assert [id(p) for p in converted.parameters()] == [id(p) for p in model.parameters()]
    x = np.random.default_rng(0).integers(0, 65, (4, 8))  # 32 tokens: one block
    logits, _ = converted(x)
    assert np.isfinite(logits.numpy()).all()
