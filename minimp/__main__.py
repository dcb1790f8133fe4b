"""``python -m minimp``: the command line.

python -m minimp            run every lesson in notebooks/ (redraws the figures)
python -m minimp lessons 02 run the lessons whose names start with 02
python -m minimp notebooks  regenerate and execute each lesson's .ipynb (notebooks 05: one)
python -m minimp demo       a short tour of the engine, every number measured
python -m minimp policies   print each regime's precision policy (no training)
python -m minimp regimes    train the precision regimes side by side (README tables)
python -m minimp figures    run every lesson, each of which redraws its own figures
python -m minimp bench      step time and memory per regime, against NumPy and PyTorch
python -m minimp gpu-check  on a GPU: GPU tests, GPU lesson, transformer, bench; one JSON
"""

from __future__ import annotations

import argparse
import os
import sys

import numpy as np

import minimp
import minimp.functional as F
from minimp import data, nn, optim


def demo(steps: int = 300, seed: int = 0) -> dict[str, float]:
    """Float16 facts, then one MLP trained on the digits in float32 and in pure float16."""
    half = minimp.float16
    print("float16 rounding, measured:")
    values = {
        "2^-24": 2.0**-24,
        "2^-25": 2.0**-25,
        "1.5 * 2^-25": 1.5 * 2.0**-25,
        "65504": 65504.0,
        "65519": 65519.0,
        "65520": 65520.0,
    }
    for name, value in values.items():
        stored = minimp.tensor([value], dtype=half).item()
        print(f"  {name:<12} is stored as {stored:.6g}")
    total = minimp.tensor([2048.0], dtype=half) + 1.0
    spacing = float(np.spacing(np.float16(2048)))
    print(
        f"  2048 + 1     = {total.item():g} in float16 (neighbours of 2048 are {spacing:g} apart)"
    )

    digits = data.load_digits(seed=seed)
    print(f"\n{digits.name}: {len(digits.x_train)} training images, {len(digits.x_test)} test")
    results = {}
    for dtype in (minimp.float32, half):
        model = nn.MLP([64, 64, 10], dtype=dtype, generator=np.random.default_rng(seed))
        opt = optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
        rng = np.random.default_rng(seed)
        step = 0
        while step < steps:
            for x, y in data.batches(digits.x_train, digits.y_train, 64, rng):
                opt.zero_grad()
                loss = F.cross_entropy(model(minimp.tensor(x, dtype=dtype)), y)
                loss.backward()
                opt.step()
                step += 1
                if step == steps:
                    break
        with minimp.no_grad():
            logits = model(minimp.tensor(digits.x_test, dtype=dtype)).numpy()
        accuracy = float(np.mean(logits.argmax(axis=1) == digits.y_test))
        results[str(dtype)] = accuracy
        print(
            f"  {dtype!s:8} MLP 64-64-10, {steps} SGD steps: last batch loss "
            f"{loss.item():.4f}, test accuracy {accuracy:.1%}"
        )
    return results


# The seeds each README table averages over: two for the digits regimes (fourteen
# regimes, the test recomputes them all), three for the large-batch Adam setting whose
# per-seed ratios the README quotes, two for the transformer.
README_SEEDS = {"default": 2, "large-batch-adam": 3, "gpt": 2}


def regimes(seeds: int | None = None, setting: str = "default") -> str:
    """Train the regimes of a documented setting over several seeds (by default the
    README's, ``README_SEEDS``); print the README table. On one BLAS thread, as the
    tests that recompute the tables run: float32 sums in another order (another thread
    count) move a late-training loss by a few percent, and the table would depend on
    the machine that printed it."""
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=1, user_api="blas"):
        return _regimes(README_SEEDS[setting] if seeds is None else seeds, setting)


def _regimes(seeds: int, setting: str) -> str:
    from minimp.tools import experiments
    from minimp.train import BEYOND_FP16, LARGE_BATCH_ADAM, REGIMES, TrainConfig

    if setting == "gpt":
        config = experiments.GPT_TABLE
        results = experiments.compare_gpt_regimes(
            data.load_shakespeare(config.gpt.block_size), config, seeds=range(seeds)
        )
        table = experiments.gpt_markdown_table(experiments.gpt_summarize(results))
        print(
            f"tiny Shakespeare, setting 'gpt': {config.gpt}, AdamW lr {config.lr}, "
            f"{config.accumulate} micro-batches of {config.batch_size}, {config.steps} steps, "
            f"seeds 0..{seeds - 1}\n"
        )
        print(table)
        return table
    config, names = {
        "default": (TrainConfig(), (*REGIMES, *BEYOND_FP16)),
        "large-batch-adam": (LARGE_BATCH_ADAM, ("fp32", "mixed-noscale", "mixed-dynamic")),
    }[setting]
    results = experiments.compare_regimes(data.load_digits(), config, names, seeds=range(seeds))
    table = experiments.markdown_table(experiments.summarize(results))
    print(
        f"digits, setting {setting!r}: MLP {config.sizes}, {config.optimizer}, lr {config.lr}, "
        f"batch {config.batch_size}, {config.steps} steps, seeds 0..{seeds - 1}\n"
    )
    print(table)
    print("\nfinal training loss / fp32's, per seed:")
    for name, ratios in experiments.loss_ratios(results).items():
        print(f"  {name:14} " + "  ".join(f"{r:.2f}" for r in ratios))
    return table


def bench(device: str = "cpu", quick: bool = False, json_path: str | None = None) -> dict:
    """Run the benchmark, print its Markdown report, and write the JSON if asked."""
    import json

    from minimp.tools import bench as benchmark

    result = benchmark.run_benchmark(device, quick, log=lambda line: print(line, flush=True))
    print()
    print(benchmark.report(result))
    if json_path:
        with open(json_path, "w") as f:
            json.dump(result, f, indent=1)
    return result


def _at_least_one(text: str) -> int:
    """An argparse type: an integer >= 1 (0 steps or 0 seeds would measure nothing)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be an integer >= 1, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be an integer >= 1, got {value}")
    return value


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m minimp",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = parser.add_subparsers(dest="command")
    run_demo = commands.add_parser("demo", help="a short tour of the engine")
    run_demo.add_argument("--steps", type=_at_least_one, default=300)
    commands.add_parser("policies", help="print each regime's precision policy (no training)")
    run_regimes = commands.add_parser("regimes", help="the regimes side by side (about a minute)")
    run_regimes.add_argument(
        "--seeds", type=_at_least_one, default=None, help="default: the README table's"
    )
    run_regimes.add_argument(
        "--setting", choices=["default", "large-batch-adam", "gpt"], default="default"
    )
    commands.add_parser("figures", help="run every lesson: each redraws its figures in figures/")
    run_lessons = commands.add_parser("lessons", help="run lessons as scripts (default: all)")
    run_lessons.add_argument("names", nargs="*", help="lesson name prefixes, e.g. 01 03")
    run_notebooks = commands.add_parser(
        "notebooks", help="regenerate and execute each lesson's .ipynb (redraws the figures)"
    )
    run_notebooks.add_argument(
        "--no-execute", action="store_true", help="only regenerate the cells, without outputs"
    )
    run_notebooks.add_argument("names", nargs="*", help="lesson name prefixes (default: all)")
    run_bench = commands.add_parser(
        "bench", help="time and measure every regime, with hand-written NumPy and PyTorch"
    )
    run_bench.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    run_bench.add_argument(
        "--quick", action="store_true", help="a few steps: checks it runs, measures nothing"
    )
    run_bench.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    run_gpu_check = commands.add_parser(
        "gpu-check", help="everything about GPUs in one run, numbers in one JSON (0 without a GPU)"
    )
    run_gpu_check.add_argument("--out", default="gpu-check", help="folder for the JSON, figures")
    args = parser.parse_args(argv)
    if args.command == "bench" and args.json:  # checked now, not after the whole benchmark
        folder = os.path.dirname(os.path.abspath(args.json))
        if not os.path.isdir(folder) or not os.access(folder, os.W_OK):
            parser.error(
                f"argument --json: cannot write {args.json}: {folder} is not a writable folder"
            )
    if args.command in (None, "lessons", "figures"):
        from minimp.tools import lessons

        names = getattr(args, "names", [])
        chosen = [p for p in lessons.lesson_paths() if not names or p.name.startswith(tuple(names))]
        if not chosen:
            parser.error(f"no lesson matches {names}: see {lessons.NOTEBOOKS}")
        for path in chosen:
            lessons.run_lesson(path)
    elif args.command == "notebooks":
        from minimp.tools import lessons

        if not lessons.IN_CHECKOUT:
            parser.error(
                "notebooks rewrites the committed notebooks of a checkout, and this minimp "
                f"is installed ({lessons.NOTEBOOKS}): clone the repository and run it there, "
                "or open the installed notebooks with jupyter"
            )
        for path in lessons.write_notebooks(not args.no_execute, tuple(args.names)):
            print(f"wrote {path}")
    elif args.command == "demo":
        demo(steps=args.steps)
    elif args.command == "policies":
        from minimp.regimes import regime_table

        print(regime_table())
    elif args.command == "regimes":
        regimes(args.seeds, args.setting)
    elif args.command == "bench":
        bench(args.device, args.quick, args.json)
    elif args.command == "gpu-check":
        from minimp.tools import gpu_check

        return gpu_check.main(args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
