"""One training loop, and the precision regimes it runs.

Every regime trains the same model from the same float32 initialisation, on the
same minibatches in the same order; only precision changes, as each regime's
policy says (:mod:`minimp.regimes`, printed by ``python -m minimp policies``).
The model is the digits MLP, or, when the config holds a ``GPTConfig``, the small
GPT of :mod:`minimp.gpt` on tiny Shakespeare (``SHAKESPEARE_GPT``): the same loop,
with gradient accumulation over micro-batches, AdamW with weight decay on the
matrices only, and linear warmup then cosine decay, as nanoGPT trains it.

The loop is the paper's recipe in the order a reader must learn it (and the
order nanoGPT uses): forward in 16 bits, loss in float32, scale the loss,
backward, copy gradients to the masters, unscale, clip, step (or skip on
inf/NaN), update the scale, refresh the 16-bit weights from the masters.
"""

from __future__ import annotations

import contextlib
import copy
import math
import sys
import warnings
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, fields
from typing import Any

import numpy as np

from minimp import backend, checkpoint, nn, optim
from minimp import functional as F
from minimp.amp import GradScaler, MasterWeights, ScaleRecord, StaticGradScaler, autocast
from minimp.checks import is_int, is_real
from minimp.data import CharCorpus, Dataset
from minimp.fp8 import Fp8Linear, to_fp8
from minimp.gpt import GPT, GPTConfig
from minimp.regimes import ALL_REGIMES, BEYOND_FP16, REGIMES, Regime, get_regime
from minimp.tensor import Tensor, bfloat16, float32, no_grad, tensor

__all__ = [
    "ALL_REGIMES",
    "BEYOND_FP16",
    "GPT_REGIMES",
    "LARGE_BATCH_ADAM",
    "REGIMES",
    "SHAKESPEARE_GPT",
    "History",
    "Regime",
    "Run",
    "SkippedStepsWarning",
    "StepInfo",
    "StepResult",
    "TrainConfig",
    "get_regime",
]


@dataclass(frozen=True)
class TrainConfig:
    """What a run trains and how. Defaults are the digits experiment (see README)."""

    sizes: tuple[int, ...] = (64, 128, 128, 10)  # an MLP on 8x8 images, 10 classes
    activation: str = "relu"
    gpt: GPTConfig | None = None  # set: train this GPT (sizes, activation unused)
    optimizer: str = "sgd"  # "sgd" (with momentum), "adam", or "adamw" (decay on matrices)
    lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 0.0
    batch_size: int = 64
    steps: int = 2000
    seed: int = 0  # initialisation and data order
    clip_norm: float | None = None
    static_scale: float = 2.0**10  # mixed-static: mid-range of the paper's 8..32K
    init_scale: float = 2.0**16  # mixed-dynamic: PyTorch's defaults, except
    growth_interval: int = 200  # 2000 would never grow in a run this short
    min_scale: float = 1.0  # below 1 scaling cannot help; stop with an explanation
    eval_every: int = 100
    record_every: int = 0  # call hooks every N steps (0: never)
    accumulate: int = 1  # GPT: micro-batches of batch_size per optimizer step
    warmup: int = 0  # steps of linear warmup from lr / warmup to lr
    cosine: bool = False  # then cosine decay to lr / 10 at the last step
    eval_batches: int = 4  # GPT: validation batches per evaluation (the same in every run)

    def __post_init__(self) -> None:
        """Every setting checked here, so a bad one fails at construction, by name."""

        def bad(name: str, allowed: str) -> ValueError:
            return ValueError(f"TrainConfig: {name} must be {allowed}, got {getattr(self, name)!r}")

        sizes = self.sizes
        if not isinstance(sizes, tuple | list) or len(sizes) < 2:
            raise bad("sizes", "a tuple of at least 2 layer widths (inputs, ..., classes)")
        if not all(is_int(n) and n >= 1 for n in sizes):
            raise bad("sizes", "layer widths that are integers >= 1")
        object.__setattr__(self, "sizes", tuple(int(n) for n in sizes))
        if self.activation not in ("relu", "tanh", "sigmoid"):
            raise bad("activation", "'relu', 'tanh' or 'sigmoid'")
        if self.optimizer not in ("sgd", "adam", "adamw"):
            raise bad("optimizer", "'sgd', 'adam' or 'adamw'")
        if self.gpt is not None and not isinstance(self.gpt, GPTConfig):
            raise bad("gpt", "None or a minimp.gpt.GPTConfig")
        if self.accumulate != 1 and self.gpt is None:
            raise bad("accumulate", "1 for the MLP (micro-batches are the GPT's)")
        for name in ("batch_size", "steps", "eval_every", "growth_interval", "accumulate"):
            if not (is_int(getattr(self, name)) and getattr(self, name) >= 1):
                raise bad(name, "an integer >= 1")
        for name in ("seed", "record_every", "warmup", "eval_batches"):
            if not (is_int(getattr(self, name)) and getattr(self, name) >= 0):
                raise bad(name, "an integer >= 0")
        for name in ("lr", "momentum", "weight_decay", "min_scale"):
            if not (is_real(getattr(self, name)) and getattr(self, name) >= 0):
                raise bad(name, "a finite number >= 0")
        for name in ("static_scale", "init_scale"):
            if not (is_real(getattr(self, name)) and getattr(self, name) > 0):
                raise bad(name, "a finite number > 0")
        if self.clip_norm is not None and not (is_real(self.clip_norm) and self.clip_norm > 0):
            raise bad("clip_norm", "None or a finite number > 0")
        if self.warmup >= self.steps:
            raise bad("warmup", f"fewer steps than steps={self.steps}")
        if not isinstance(self.cosine, bool):
            raise bad("cosine", "True or False")


# The setting where unscaled float16 gradients do hurt (README, "When scaling matters"):
# large-batch Adam. The mean over 1024 examples divides each example's gradient by
# 2^10, and late in training the loss itself is small, so most gradients fall below
# float16's 2^-24; Adam's step does not shrink with the gradient, so in float32 those
# tiny gradients still move the weights, while float16 has flushed them to zero.
LARGE_BATCH_ADAM = TrainConfig(
    optimizer="adam", lr=1e-3, batch_size=1024, steps=3000, eval_every=500
)


# The transformer of lesson 10: nanoGPT's shakespeare_char recipe, shrunk until all six
# regimes train in a lesson's budget on one CPU core (a 32-wide, 2-layer GPT with a
# 32-character context; 2 micro-batches of 8 windows per step).
SHAKESPEARE_GPT = TrainConfig(
    gpt=GPTConfig(block_size=32, n_layer=2, n_head=4, n_embd=32),
    optimizer="adamw", lr=1e-2, weight_decay=0.1, batch_size=8, accumulate=2,
    steps=120, warmup=10, cosine=True, clip_norm=1.0, eval_every=20, eval_batches=4,
    growth_interval=50,
)  # fmt: skip

# The regimes the transformer trains in (lesson 10, README), in the order.
GPT_REGIMES = ("fp32", "fp16", "mixed-noscale", "mixed-dynamic", "bf16", "fp16-everywhere")


@dataclass
class History:
    """What a run measured, step by step: the input of every plot."""

    regime: str
    step: list[int] = field(default_factory=list)
    loss: list[float] = field(default_factory=list)  # training batch loss (unscaled)
    scale: list[float] = field(default_factory=list)  # loss scale used (1 without scaling)
    skipped: list[bool] = field(default_factory=list)  # step skipped for inf/NaN
    lost_updates: list[float] = field(default_factory=list)  # see Run._lost_fraction
    eval_step: list[int] = field(default_factory=list)
    test_loss: list[float] = field(default_factory=list)  # GPT: validation loss
    test_accuracy: list[float] = field(default_factory=list)  # GPT: next-character accuracy
    memory: dict[str, int] = field(default_factory=dict)  # stored bytes by category, if measured
    peak_memory: int = 0  # bytes allocated at once during a step, if measured (minimp.memory)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class SkippedStepsWarning(UserWarning):
    """Many steps in a row were skipped for inf/NaN gradients: the run is not training."""


SKIPPED_IN_A_ROW = 10  # steps skipped in a row before train() says so (once per such run)


@dataclass
class StepInfo:
    """Handed to hooks after backward, before the optimizer step: everything a
    gradient statistic might look at. Activations are each Linear layer's output,
    with ``.grad`` (scaled, in the model's dtype) retained."""

    step: int
    regime: Regime
    loss: float
    scale: float
    model: nn.Module
    masters: MasterWeights | None
    activations: list[tuple[str, Tensor]]
    inputs: np.ndarray  # the batch
    targets: np.ndarray


Hook = Callable[[StepInfo], None]


@dataclass
class StepResult:
    """What one ``Run.step`` did: the (unscaled) loss, the loss scale it used (1 without
    scaling), whether the optimizer stepped (False: skipped for inf/NaN), and the
    fraction of updates rounding lost (NaN unless measured; see ``Run._lost_fraction``)."""

    loss: Tensor
    scale: float
    stepped: bool
    lost_updates: float


class Run:
    """A regime, a config and a data set: the model, masters, optimizer, scaler,
    and the history so far. ``run.train(n)`` trains n more steps; ``save``/``load``
    checkpoint it, so a stopped run continues bit for bit."""

    def __init__(
        self,
        regime: str | Regime,
        dataset: Dataset,
        config: TrainConfig = TrainConfig(),
        device: str = "cpu",
    ):
        self.regime = get_regime(regime)
        if config.gpt is not None:
            self._check_corpus(dataset, config)
        elif not isinstance(dataset, Dataset):
            raise TypeError(
                f"the MLP trains on a minimp.data.Dataset, got {type(dataset).__name__}; "
                "for a CharCorpus, set TrainConfig(gpt=GPTConfig(...))"
            )
        elif config.sizes[0] != dataset.n_features or config.sizes[-1] != dataset.n_classes:
            raise ValueError(
                f"model sizes {config.sizes} do not fit {dataset.name}: "
                f"{dataset.n_features} features in, {dataset.n_classes} classes out"
            )
        elif config.batch_size > len(dataset.x_train):
            raise ValueError(
                f"TrainConfig: batch_size must be at most the {len(dataset.x_train)} training "
                f"examples of {dataset.name}, got {config.batch_size}"
            )
        backend.check_device(device)
        if device == "cuda" and bfloat16 in (self.regime.param_dtype, self.regime.compute_dtype):
            raise ValueError(
                f"regime {self.regime.name!r} computes in bfloat16, which minimp keeps on the "
                "CPU: CuPy cannot hold ml_dtypes' bfloat16 arrays. Use device='cpu'"
            )
        self.dataset, self.config, self.device = dataset, config, device
        # The same float32 initialisation for every regime, rounded to its dtype.
        rng = np.random.default_rng(config.seed)
        if config.gpt is not None:
            self.model = GPT(config.gpt, device=device, generator=rng)
        else:
            self.model = nn.MLP(config.sizes, config.activation, device=device, generator=rng)
        self.model.to(self.regime.param_dtype)
        if self.regime.matmul is not None:  # the same parameters, their matmuls in fp8
            self.model = to_fp8(self.model, self.regime.matmul)
        self.masters = MasterWeights(self.model) if self.regime.master_weights else None
        params = self.masters.parameters() if self.masters else self.model.parameters()
        # What the optimizer updates, by the model's names (the masters in their order)
        self.updated = dict(zip((n for n, _ in self.model.named_parameters()), params, strict=True))
        self.lost_by_parameter = {name: [0, 0] for name in self.updated}  # [lost, moved]
        rounding = {"update_rounding": self.regime.update_rounding}
        if self.regime.update_rounding == "stochastic":  # its own stream, fixed by the seed
            rounding["generator"] = np.random.default_rng([config.seed, 1])
        if config.optimizer == "sgd":
            self.optimizer = optim.SGD(
                params, config.lr, config.momentum, config.weight_decay, **rounding
            )
        elif config.optimizer == "adam":
            self.optimizer = optim.Adam(
                params, config.lr, weight_decay=config.weight_decay, **rounding
            )
        else:  # nanoGPT's groups: matrices and embeddings decay, gains and biases do not
            groups = [
                {"params": [p for p in params if p.ndim >= 2]},
                {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0},
            ]
            self.optimizer = optim.AdamW(
                groups, config.lr, weight_decay=config.weight_decay, **rounding
            )
        self.scheduler = _schedule(self.optimizer, config)
        if self.regime.loss_scaling == "static":
            self.scaler = StaticGradScaler(config.static_scale)
        else:
            self.scaler = GradScaler(
                init_scale=config.init_scale,
                growth_interval=config.growth_interval,
                min_scale=config.min_scale,
                enabled=self.regime.loss_scaling == "dynamic",
            )
        self.history = History(self.regime.name)
        self.steps_done = 0

    @staticmethod
    def _check_corpus(corpus: Any, config: TrainConfig) -> None:
        if not isinstance(corpus, CharCorpus):
            raise TypeError(
                f"TrainConfig(gpt=...) trains on a minimp.data.CharCorpus (data.load_shakespeare),"
                f" got {type(corpus).__name__}"
            )
        if (corpus.vocab_size, corpus.block_size) != (
            config.gpt.vocab_size,
            config.gpt.block_size,
        ):
            raise ValueError(
                f"the GPT (vocab_size={config.gpt.vocab_size}, block_size="
                f"{config.gpt.block_size}) does not fit the corpus (vocab_size="
                f"{corpus.vocab_size}, block_size={corpus.block_size}): load it with "
                f"data.load_shakespeare(block_size={config.gpt.block_size})"
            )

    # ---- data order: a pure function of (seed, step), so a resumed run sees the same
    def _batch(self, step: int) -> tuple[np.ndarray, np.ndarray]:
        if self.config.gpt is not None:  # (micro-batches, batch_size, block_size)
            rng = np.random.default_rng((self.config.seed, step))
            pairs = [
                self.dataset.batch("train", self.config.batch_size, rng)
                for _ in range(self.config.accumulate)
            ]
            return np.stack([x for x, _ in pairs]), np.stack([y for _, y in pairs])
        x, y = self.dataset.x_train, self.dataset.y_train
        per_epoch = len(x) // self.config.batch_size
        epoch, i = divmod(step, per_epoch)
        order = np.random.default_rng((self.config.seed, epoch)).permutation(len(x))
        rows = order[i * self.config.batch_size : (i + 1) * self.config.batch_size]
        return x[rows], y[rows]

    def to_device(self, x: np.ndarray, y: np.ndarray) -> tuple[Tensor, Any]:
        """A batch as the step takes it: inputs in the parameters' dtype (autocast casts
        them per op where the regime has it), both on the device."""
        xp = backend.array_module(self.model.parameters()[0].data)
        if self.config.gpt is not None:  # token ids stay integers
            return xp.asarray(x), xp.asarray(y)
        return tensor(x, dtype=self.regime.param_dtype, device=self.device), xp.asarray(y)

    def _forward(self, x: Any, keep: bool) -> tuple[Tensor, list[tuple[str, Tensor]]]:
        kept: list[tuple[str, Tensor]] = []
        with (
            autocast(self.regime.compute_dtype, float32_list=self.regime.autocast_float32)
            if self.regime.autocast
            else contextlib.nullcontext()
        ):
            if self.config.gpt is not None:  # keeps each block's attention and MLP output
                logits, _ = self.model(x, None, kept if keep else None)
                return logits, kept
            h = x if isinstance(x, Tensor) else tensor(x, self.regime.param_dtype, self.device)
            for i, layer in enumerate(self.model.layers):
                h = layer(h)
                if keep and layer.parameters() and h.requires_grad:  # a Linear's output
                    kept.append((f"layers.{i}", h.retain_grad()))
        return h, kept

    def _loss(self, logits: Tensor, y: Any) -> Tensor:
        y = backend.array_module(logits.data).asarray(y)
        if logits.ndim == 3:  # the GPT's (B, T, vocab): every position is a prediction
            logits, y = logits.view(-1, logits.shape[-1]), y.reshape(-1)
        return F.cross_entropy(logits.to(self.regime.loss_dtype), y)

    def step(self, x: Any, y: Any, hooks: Sequence[Hook] = (), measure: bool = False) -> StepResult:
        """One training step on the batch ``(x, y)``, in the paper's order: forward in the
        regime's dtype, loss (float32 with masters), scale, backward, gradients to the
        masters, unscale, clip, [hooks], step or skip, update the scale, refresh the
        16-bit weights. ``x`` is an array or a Tensor already on the device (see
        ``to_device``). ``measure`` also counts the updates rounding lost (costs a
        comparison of every weight). This is the step ``train`` runs and the benchmark times.

        A GPT's batch is ``config.accumulate`` micro-batches along the first axis: each
        one's loss is divided by their number and backward adds its gradients to the
        last's; unscale, clip, step and update happen once, after the last (PyTorch's
        AMP examples, "gradient accumulation"). Hooks see the last micro-batch."""
        micro = [(x, y)]
        if self.config.gpt is not None:
            if len(x) != len(y):
                raise ValueError(
                    f"Run.step: {len(x)} micro-batches of inputs and {len(y)} of targets"
                )
            micro = [(x[i], y[i]) for i in range(len(x))]  # indexed: nothing read back
        scale = self.scaler.get_scale() if self.scaler.is_enabled() else 1.0
        total = None  # the micro-batches' losses summed in float64 on the device: no sync
        for xb, yb in micro:
            logits, activations = self._forward(xb, keep=bool(hooks))
            loss = self._loss(logits, yb)
            if len(micro) > 1:
                loss = loss / len(micro)
            self.scaler.scale(loss).backward()
            if len(micro) > 1:
                wide = loss.data.astype(np.float64)
                total = wide if total is None else total + wide
        if len(micro) > 1:
            loss = tensor(total)  # the mean over micro-batches, for the history (float32)
            x, y = micro[-1]
        if self.scaler.is_enabled():  # with masters: their gradients made, checked, unscaled
            self.scaler.unscale_(self.optimizer, masters=self.masters)
        elif self.masters:
            self.masters.copy_grads_to_masters()
        if self.config.clip_norm is not None:
            nn.clip_grad_norm_(list(self.updated.values()), self.config.clip_norm)
        if hooks:
            info = StepInfo(
                self.steps_done, self.regime, loss.item(), scale, self.model, self.masters,
                activations, backend.to_numpy(x.data if isinstance(x, Tensor) else x),
                backend.to_numpy(y),
            )  # fmt: skip
            for hook in hooks:
                hook(info)
        # the optimizer updates float32 parameters in place (a copy), 16-bit ones anew
        before = (
            [p.data.copy() if p.dtype == float32 else p.data for p in self.updated.values()]
            if measure
            else None
        )
        stepped = self.scaler.step(self.optimizer)
        if stepped and self.scheduler is not None:  # a skipped step does not advance it
            self.scheduler.step()
        self.scaler.update()
        if self.masters:
            self.masters.copy_masters_to_model()
        lost = self._lost_fraction(before) if measure and stepped else math.nan
        self.optimizer.zero_grad()
        self.model.zero_grad()
        self.steps_done += 1
        return StepResult(loss, scale, stepped, lost)

    def train(self, steps: int | None = None, hooks: Sequence[Hook] = (), progress=None) -> History:
        """Train ``steps`` more steps (default: up to ``config.steps``) on the run's batches,
        recording the history and evaluating every ``config.eval_every`` steps. ``hooks``
        see every ``config.record_every``-th step (see ``StepInfo``)."""
        steps = self.config.steps - self.steps_done if steps is None else steps
        record_every = self.config.record_every
        bar = _progress(steps, self.regime.name, progress)
        for _ in range(steps):
            step = self.steps_done
            x, y = self._batch(step)
            keep = bool(hooks) and record_every > 0 and step % record_every == 0
            result = self.step(x, y, hooks if keep else (), measure=True)
            h = self.history
            h.step.append(step)
            h.loss.append(result.loss.item())
            h.scale.append(result.scale)
            h.skipped.append(not result.stepped)
            h.lost_updates.append(result.lost_updates)
            self._warn_if_skipping()
            if (
                self.steps_done % self.config.eval_every == 0
                or self.steps_done == self.config.steps
            ):
                self.evaluate()
            bar.update()
        bar.close()
        return self.history

    def _warn_if_skipping(self) -> None:
        """Warn once when the history's last SKIPPED_IN_A_ROW steps, and no more, were all
        skipped: a scale that overflows every step trains nothing, without a word."""
        tail = self.history.skipped[-SKIPPED_IN_A_ROW - 1 :]
        if tail[-SKIPPED_IN_A_ROW:] == [True] * SKIPPED_IN_A_ROW and (
            len(tail) == SKIPPED_IN_A_ROW or not tail[0]
        ):
            scale = self.history.scale[-1]
            warnings.warn(
                f"{self.regime.name}: the last {SKIPPED_IN_A_ROW} steps were all skipped, their "
                f"gradients inf or NaN at loss scale {scale:.10g} (2^{math.log2(scale):.3g}): the "
                "weights are not being updated. "
                + (
                    "The scale backs off at each skip, so the overflow is not the scale's: "
                    "look for inf/NaN in the forward pass or the data"
                    if self.regime.loss_scaling == "dynamic"
                    else "Lower the scale (TrainConfig(static_scale=...)) or let it adapt "
                    "(regime 'mixed-dynamic')"
                ),
                SkippedStepsWarning,
                stacklevel=3,
            )

    def _lost_fraction(self, before: list[Any]) -> float:
        """Of the weights whose gradient was nonzero, the fraction the update left
        unchanged: the update was below half an ulp of the weight and rounded away
        (sec. 3.1). Measured on what the optimizer updates: the float16 weights in
        pure fp16, the float32 masters otherwise. A gradient the regime's format
        flushed to zero asks for no update and is not counted: without a loss scale
        the smallest gradients, whose updates would round away, leave the count, so
        mixed-noscale can show fewer lost updates than fp32 (lesson 6 measures it)."""
        counts = []  # on the device, read back once: one sync, not two per parameter
        for p, old in zip(self.updated.values(), before, strict=True):
            nonzero = p.grad.data != 0
            counts += [(nonzero & (p.data == old)).sum(), nonzero.sum()]
        xp = backend.array_module(counts[0])
        per_parameter = backend.to_numpy(xp.stack(counts)).reshape(-1, 2)
        for name, (lost_here, moved_here) in zip(self.updated, per_parameter.tolist(), strict=True):
            self.lost_by_parameter[name][0] += lost_here
            self.lost_by_parameter[name][1] += moved_here
        lost, moved = per_parameter.sum(axis=0).tolist()
        return lost / moved if moved else math.nan

    def save(self, path) -> None:
        """Checkpoint everything the next step depends on, plus the histories."""
        self._check_checkpointable()
        checkpoint.save(
            path,
            model=self.model,
            optimizer=self.optimizer,
            masters=self.masters,
            scaler=self.scaler,
            extra={
                "regime": self.regime.name,
                "config": asdict(self.config),
                "steps_done": self.steps_done,
                "history": self.history.to_dict(),
                "scale_history": [asdict(r) for r in self.scaler.history],
                "fp8_scaling": [
                    {k: np.asarray(v).tolist() for k, v in layer.scaling_state().items()}
                    for layer in self.fp8_layers()
                ],
            },
        )

    def _check_checkpointable(self) -> None:
        if self.scheduler is not None:
            raise NotImplementedError(
                "checkpoints of runs with a learning-rate schedule (warmup, cosine) are not "
                "supported yet: the schedule's position is not saved"
            )

    def fp8_layers(self) -> list[Fp8Linear]:
        """The model's fp8 layers (none unless the regime has an fp8 recipe)."""
        if self.config.gpt is not None:
            return []
        return [layer for layer in self.model.layers if isinstance(layer, Fp8Linear)]

    def load(self, path, allow_nonfinite: bool = False) -> None:
        """Continue from a checkpoint saved by a run of the same regime and config. The
        file is read once and all of it checked before anything changes: a bad file
        raises ``CheckpointError`` and leaves the run as it was. NaN or inf weights are
        refused unless ``allow_nonfinite`` (``path`` may also be ``checkpoint.read``'s
        contents)."""
        self._check_checkpointable()
        contents = path if isinstance(path, checkpoint.Contents) else checkpoint.read(path)
        path = contents.path
        extra = contents.extra

        def fail(what: str) -> checkpoint.CheckpointError:
            return checkpoint.CheckpointError(f"{path}: {what}")

        missing = {"regime", "config", "steps_done", "history", "scale_history"} - set(extra)
        if missing:
            raise fail(f"holds no {', '.join(sorted(missing))}: not saved by Run.save")
        try:
            saved_config = dict(extra["config"])
            saved_config["sizes"] = tuple(saved_config.get("sizes", ()))
            if isinstance(saved_config.get("gpt"), dict):
                saved_config["gpt"] = GPTConfig(**saved_config["gpt"])
            config = TrainConfig(**saved_config)
        except (TypeError, ValueError) as err:
            raise fail(f"its config does not make a TrainConfig: {err}") from None
        if extra["regime"] != self.regime.name:
            raise fail(f"saved by a {extra['regime']!r} run, not this {self.regime.name!r} run")
        if config != self.config:
            differ = [
                f"{f.name} {getattr(config, f.name)!r} there, {getattr(self.config, f.name)!r} here"
                for f in fields(TrainConfig)
                if getattr(config, f.name) != getattr(self.config, f.name)
            ]
            raise fail(f"saved with another config: {'; '.join(differ)}")
        steps_done = extra["steps_done"]
        if isinstance(steps_done, bool) or not isinstance(steps_done, int) or steps_done < 0:
            raise fail(f"steps_done must be an integer >= 0, got {steps_done!r}")
        history = _checked_history(extra["history"], self.regime.name, fail)
        scale_history = _checked_scale_history(extra["scale_history"], fail)
        fp8_states = self._checked_fp8_states(extra.get("fp8_scaling", []), fail)
        arrays = [
            k[len("optimizer/") :] for k in contents.meta["dtypes"] if k.startswith("optimizer/")
        ]
        self._check_optimizer_meta(contents.meta.get("optimizer"), arrays, history, fail)
        apply = checkpoint.prepare(
            contents,
            model=self.model,
            optimizer=self.optimizer,
            masters=self.masters,
            scaler=self.scaler,
            allow_nonfinite=allow_nonfinite,
        )
        # Everything is checked: from here on nothing can fail.
        apply()
        self.steps_done = steps_done
        self.history = history
        self.scaler.history = scale_history
        for layer, state in zip(self.fp8_layers(), fp8_states, strict=True):
            layer.load_scaling_state(state)

    def _checked_fp8_states(self, states: Any, fail) -> list[dict[str, Any]]:
        layers = self.fp8_layers()
        if not isinstance(states, list) or len(states) != len(layers):
            raise fail(f"holds fp8 scales {states!r:.80}, this run has {len(layers)} fp8 layers")
        checked = []
        for layer, state in zip(layers, states, strict=True):
            try:
                state = {
                    k: np.asarray(v, np.float32) if isinstance(v, list) else v
                    for k, v in state.items()
                }
                copy.deepcopy(layer).load_scaling_state(state)
            except (AttributeError, KeyError, TypeError, ValueError) as err:
                raise fail(f"holds fp8 scales that do not fit: {err}") from None
            checked.append(state)
        return checked

    def _check_optimizer_meta(
        self, saved: Any, array_keys: list[str], history: History, fail
    ) -> None:
        """The optimizer's settings in the file are this run's (a checkpoint never changes
        lr, betas or update_rounding), and its state is complete: every parameter has
        what a step gives it, or, before any step was taken, nothing."""
        if not isinstance(saved, dict) or not isinstance(saved.get("param_groups"), list):
            raise fail("holds no optimizer section")
        ours = self.optimizer.state_dict()["param_groups"]
        if len(saved["param_groups"]) != len(ours):
            raise fail(
                f"holds {len(saved['param_groups'])} optimizer param groups, not {len(ours)}"
            )
        for group, mine in zip(saved["param_groups"], ours, strict=True):
            keys = set(mine) - {"generator"}
            if set(group) - {"generator"} != keys:
                raise fail(f"optimizer settings {sorted(set(group))}, expected {sorted(set(mine))}")
            for key in sorted(keys - {"params"}):
                want = list(mine[key]) if isinstance(mine[key], tuple) else mine[key]
                if group[key] != want or type(group[key]) is not type(want):
                    raise fail(
                        f"optimizer setting {key} is {group[key]!r}, this run's is {mine[key]!r} "
                        "(from its TrainConfig and regime)"
                    )
        probe = copy.deepcopy(self.optimizer)  # what one step leaves in the state
        params = [p for g in probe.param_groups for p in g["params"]]
        for p in params:
            p.grad = Tensor(backend.array_module(p.data).zeros_like(p.data))
        probe.step()
        expected = sorted(probe.state[id(params[0])]) if params and probe.state else []
        held: dict[int, set[str]] = {}
        for key in saved.get("counters", {}):
            i, name = key.split("/", 1)
            held.setdefault(int(i), set()).add(name)
        for key in array_keys:
            i, name = key.split("/", 1)
            held.setdefault(int(i), set()).add(name)
        if not held and expected and False in history.skipped:
            raise fail(
                f"holds no optimizer state ({', '.join(expected)}), but its history has steps "
                "that were taken: the state was removed"
            )
        if held:
            for i in range(len(params)):
                if sorted(held.get(i, ())) != expected:
                    raise fail(
                        f"optimizer state of parameter {i} is {sorted(held.get(i, ()))}, "
                        f"expected {expected}"
                    )

    def evaluate(self) -> tuple[float, float]:
        """Test loss and accuracy, in the regime's dtype (the model as deployed). The GPT's:
        validation loss and next-character accuracy over ``eval_batches`` windows of the
        validation text, the same windows in every run and at every evaluation."""
        if self.config.gpt is not None:
            rng = np.random.default_rng(2018)
            losses, hits = [], []
            with no_grad():
                for _ in range(self.config.eval_batches):
                    x, y = self.to_device(*self.dataset.batch("val", self.config.batch_size, rng))
                    logits, _ = self._forward(x, keep=False)
                    losses.append(self._loss(logits, y).item())
                    hits.append(float(np.mean(logits.numpy().argmax(-1) == backend.to_numpy(y))))
            loss, accuracy = float(np.mean(losses)), float(np.mean(hits))
            self.history.eval_step.append(self.steps_done)
            self.history.test_loss.append(loss)
            self.history.test_accuracy.append(accuracy)
            return loss, accuracy
        with no_grad():
            logits, _ = self._forward(self.dataset.x_test, keep=False)
            loss = self._loss(logits, self.dataset.y_test).item()
        accuracy = float(np.mean(logits.numpy().argmax(axis=1) == self.dataset.y_test))
        self.history.eval_step.append(self.steps_done)
        self.history.test_loss.append(loss)
        self.history.test_accuracy.append(accuracy)
        return loss, accuracy


_HISTORY_ITEMS = {  # History's lists and what each element must be
    "step": int,
    "loss": float,
    "scale": float,
    "skipped": bool,
    "lost_updates": float,
    "eval_step": int,
    "test_loss": float,
    "test_accuracy": float,
}


def _checked_history(saved: Any, regime: str, fail) -> History:
    """A History from a checkpoint's JSON, every field's type and length checked."""
    names = {f.name for f in fields(History)}
    if not isinstance(saved, dict) or set(saved) != names:
        keys = sorted(saved) if isinstance(saved, dict) else type(saved).__name__
        raise fail(f"history has keys {keys}, expected {sorted(names)}")
    if saved["regime"] != regime:
        raise fail(f"history is of regime {saved['regime']!r}, not {regime!r}")
    for name, kind in _HISTORY_ITEMS.items():
        values = saved[name]
        ok = isinstance(values, list) and all(
            isinstance(v, bool) if kind is bool else _is_number(v, kind) for v in values
        )
        if not ok:
            raise fail(f"history {name} must be a list of {kind.__name__}s, got {values!r:.60}")
    for group in (
        ("step", "loss", "scale", "skipped", "lost_updates"),
        ("eval_step", "test_loss", "test_accuracy"),
    ):
        lengths = {name: len(saved[name]) for name in group}
        if len(set(lengths.values())) > 1:
            raise fail(f"history lists of one length differ in length: {lengths}")
    memory = saved["memory"]
    if not isinstance(memory, dict) or not all(_is_number(v, int) for v in memory.values()):
        raise fail(f"history memory must map categories to byte counts, got {memory!r:.60}")
    if not _is_number(saved["peak_memory"], int):
        raise fail(f"history peak_memory must be a byte count, got {saved['peak_memory']!r:.60}")
    return History(**copy.deepcopy(saved))


def _is_number(v: Any, kind: type) -> bool:
    if isinstance(v, bool):
        return False
    return isinstance(v, int) if kind is int else isinstance(v, int | float)


def _checked_scale_history(saved: Any, fail) -> list[ScaleRecord]:
    names = [f.name for f in fields(ScaleRecord)]
    kinds = {"step": int, "scale": float, "found_inf": bool, "skipped": bool}
    if not isinstance(saved, list):
        raise fail(f"scale_history must be a list, got {type(saved).__name__}")
    for i, record in enumerate(saved):
        ok = isinstance(record, dict) and sorted(record) == sorted(names)
        ok = ok and all(
            isinstance(record[k], bool) if kinds[k] is bool else _is_number(record[k], kinds[k])
            for k in names
        )
        if not ok:
            raise fail(f"scale_history entry {i} is {record!r:.60}, expected keys {names}")
    return [ScaleRecord(**r) for r in saved]


def _schedule(optimizer: optim.Optimizer, config: TrainConfig):
    """Linear warmup then cosine decay to lr / 10 (nanoGPT's), stepped once per step
    taken; None for a constant learning rate."""
    sched = optim.lr_scheduler
    parts, milestones = [], []
    if config.warmup:
        parts.append(sched.LinearLR(optimizer, 1.0 / config.warmup, 1.0, config.warmup))
        milestones.append(config.warmup)
    if config.cosine:
        parts.append(
            sched.CosineAnnealingLR(optimizer, config.steps - config.warmup, config.lr / 10)
        )
    if len(parts) < 2:
        return parts[0] if parts else None
    return sched.SequentialLR(optimizer, parts, milestones)


class _NoBar:
    def update(self) -> None: ...
    def close(self) -> None: ...


def _progress(total: int, name: str, show: bool | None):
    """A tqdm bar when asked for (default: only on an interactive terminal)."""
    if show is None:
        show = sys.stderr.isatty() and total >= 500
    if not show:
        return _NoBar()
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=name, leave=False)
