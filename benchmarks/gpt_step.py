"""One GPT training step in minimp float32 beside the same model in PyTorch eager.

    python benchmarks/gpt_step.py [--batch 16] [--steps 5] [--repeats 5]

Same shape (minimp.gpt.GPTConfig's default), same weights (copied from minimp's
state_dict by name), same batches of tiny Shakespeare; a step is forward, loss,
backward and an Adam update, timed with minimp.tools.bench.time_interleaved (median of
interleaved blocks, so a load that comes and goes falls on both alike). Prints
the step times and their ratio; only the ratio measured in one run means anything.
"""

from __future__ import annotations

import argparse
import math

import numpy as np
import torch

from minimp import data, optim
from minimp.gpt import GPT, GPTConfig
from minimp.tools.bench import time_interleaved

F = torch.nn.functional


class TorchBlock(torch.nn.Module):
    def __init__(self, c: int, n_head: int) -> None:
        super().__init__()
        self.n_head = n_head
        self.ln_1, self.ln_2 = torch.nn.LayerNorm(c), torch.nn.LayerNorm(c)
        self.attn, self.mlp = torch.nn.Module(), torch.nn.Module()
        self.attn.qkv, self.attn.proj = torch.nn.Linear(c, 3 * c), torch.nn.Linear(c, c)
        self.mlp.fc, self.mlp.proj = torch.nn.Linear(c, 4 * c), torch.nn.Linear(4 * c, c)

    def forward(self, x: torch.Tensor, future: torch.Tensor) -> torch.Tensor:
        b, t, c = x.shape
        hs = c // self.n_head
        q, k, v = self.attn.qkv(self.ln_1(x)).split(c, dim=2)
        q, k, v = (z.view(b, t, self.n_head, hs).transpose(1, 2) for z in (q, k, v))
        att = ((q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(hs))).masked_fill(future, -math.inf)
        y = (torch.softmax(att, -1) @ v).transpose(1, 2).reshape(b, t, c)
        x = x + self.attn.proj(y)
        return x + self.mlp.proj(F.gelu(self.mlp.fc(self.ln_2(x))))


class TorchGPT(torch.nn.Module):
    """minimp.gpt.GPT in PyTorch eager, with the same parameter names."""

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        c = config.n_embd
        self.wte = torch.nn.Embedding(config.vocab_size, c)
        self.wpe = torch.nn.Embedding(config.block_size, c)
        self.blocks = torch.nn.ModuleList(
            TorchBlock(c, config.n_head) for _ in range(config.n_layer)
        )
        self.ln_f = torch.nn.LayerNorm(c)
        self.lm_head = torch.nn.Linear(c, config.vocab_size, bias=False)

    def forward(self, idx: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        t = idx.shape[1]
        future = torch.triu(torch.ones(t, t, dtype=torch.bool), diagonal=1)
        x = self.wte(idx) + self.wpe(torch.arange(t))
        for block in self.blocks:
            x = block(x, future)
        logits = self.lm_head(self.ln_f(x))
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))


def compare(batch_size: int = 16, steps: int = 5, repeats: int = 5, warmup: int = 2) -> dict:
    """Median seconds per step for each, and minimp's time over PyTorch's."""
    config = GPTConfig()
    corpus = data.load_shakespeare(config.block_size)
    rng = np.random.default_rng(0)
    batches = [corpus.batch("train", batch_size, rng) for _ in range(4)]
    model = GPT(config, generator=np.random.default_rng(0))
    reference = TorchGPT(config)
    reference.load_state_dict({k: torch.tensor(v) for k, v in model.state_dict().items()})
    ours_opt = optim.Adam(model.parameters(), lr=1e-3)
    theirs_opt = torch.optim.Adam(reference.parameters(), lr=1e-3)
    torch_batches = [(torch.tensor(x), torch.tensor(y)) for x, y in batches]
    count = {"minimp": 0, "torch": 0}
    losses: dict[str, list[float]] = {"minimp": [], "torch": []}

    def minimp_step() -> None:
        x, y = batches[count["minimp"] % len(batches)]
        count["minimp"] += 1
        ours_opt.zero_grad()
        loss = model(x, y)[1]
        loss.backward()
        ours_opt.step()
        losses["minimp"].append(loss.item())

    def torch_step() -> None:
        x, y = torch_batches[count["torch"] % len(batches)]
        count["torch"] += 1
        theirs_opt.zero_grad()
        loss = reference(x, y)
        loss.backward()
        theirs_opt.step()
        losses["torch"].append(loss.item())

    times = time_interleaved(
        {"minimp fp32": minimp_step, "torch fp32 eager": torch_step},
        steps=steps,
        repeats=repeats,
        warmup=warmup,
    )
    ratio = times["minimp fp32"]["step_time_s"] / times["torch fp32 eager"]["step_time_s"]
    return {
        "config": config,
        "batch_size": batch_size,
        "times": times,
        "ratio": ratio,
        "losses": losses,  # the same work: step for step, the same losses
        "torch_threads": torch.get_num_threads(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    result = compare(args.batch, args.steps, args.repeats)
    print(f"{result['config']}, batch {result['batch_size']}, {result['torch_threads']} threads")
    for name, t in result["times"].items():
        print(
            f"{name:<18} {t['step_time_s'] * 1e3:8.1f} ms/step "
            f"(min {t['step_time_min_s'] * 1e3:.1f}, max {t['step_time_max_s'] * 1e3:.1f})"
        )
    print(f"minimp / torch: {result['ratio']:.2f}x")


if __name__ == "__main__":
    main()
