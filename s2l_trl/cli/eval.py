"""`s2l-eval`: Pass@1 over k samples (and the pass@k curve) on AIME 24/25, MATH500 and out-of-domain sets.

s2l-eval --model_path Qwen/Qwen3-1.7B --mode nothink --k 16 --benchmarks aime24 aime25 math500
s2l-eval --model_path <ckpt> --backend server --server_base_url http://127.0.0.1:8000
s2l-eval --config eval.yaml                                          # the same fields as YAML keys
s2l-eval --model_path <ckpt> --timestamp 20250101_120000            # resume an interrupted run
s2l-eval --model_path <ckpt> --timestamp 20250101_120000 --skip_inference   # re-extract and re-score
s2l-eval plot result/Qwen3-0.6B_<ts> result/Qwen3-1.7B_<ts> --output passk.png
"""

from __future__ import annotations

import argparse
import logging
import sys
from dataclasses import dataclass, field

from ..evaluation.runner import EvalArguments
from .errors import CliParser, run_cli

JUDGES = ("math_verify", "official_compat")


@dataclass
class PlotArguments:
    r"""
    Settings of `s2l-eval plot`: pass@k-vs-k curves (log2 k axis) of finished runs, one panel per benchmark, to PNG.
    The result folders may also be given first, without `--result_dirs`.

    Parameters:
        result_dirs (`list[str]`):
            `result/<model>_<timestamp>` folders written by `s2l-eval`, one curve each.
        output (`str`, *optional*, defaults to `"passk.png"`):
            Path of the PNG.
        labels (`list[str]` or `None`, *optional*, defaults to `None`):
            Legend entries, one per result folder (default: the folder names).
        benchmarks (`list[str]` or `None`, *optional*, defaults to `None`):
            Panels to draw (default: every benchmark found).
        judge (`str`, *optional*, defaults to `"math_verify"`):
            Whose verdicts to plot: `"math_verify"` or `"official_compat"` (the authors' lenient rule).
    """

    result_dirs: list[str] = field(
        metadata={"help": "`result/<model>_<timestamp>` folders written by `s2l-eval`, one curve each."}
    )
    output: str = field(default="passk.png", metadata={"help": "Path of the PNG."})
    labels: list[str] | None = field(
        default=None, metadata={"help": "Legend entries, one per result folder (default: the folder names)."}
    )
    benchmarks: list[str] | None = field(
        default=None, metadata={"help": "Panels to draw (default: every benchmark found)."}
    )
    judge: str = field(
        default="math_verify",
        metadata={
            "help": 'Whose verdicts to plot: `"math_verify"` or `"official_compat"` (the authors\' lenient rule).',
            "choices": list(JUDGES),
        },
    )

    def __post_init__(self):
        if self.judge not in JUDGES:
            raise ValueError(f"judge must be one of {list(JUDGES)}, got {self.judge!r}.")
        if self.labels is not None and len(self.labels) != len(self.result_dirs):
            raise ValueError(
                f"labels has {len(self.labels)} entries for {len(self.result_dirs)} result_dirs; expected one each."
            )


def make_parser() -> CliParser:
    return CliParser(EvalArguments, prog="s2l-eval", description=__doc__, formatter_class=argparse.RawTextHelpFormatter)


def make_plot_parser() -> CliParser:
    return CliParser(PlotArguments, prog="s2l-eval plot", description=PlotArguments.__doc__.split("Parameters:")[0])


def plot(argv: list[str]) -> dict:
    """`s2l-eval plot DIR [DIR ...] [--output passk.png] ...`."""
    from ..evaluation.plot import plot_passk

    if argv and not argv[0].startswith("-"):  # leading result folders, as positionals
        argv = ["--result_dirs", *argv]
    (a,) = make_plot_parser().parse_args_and_config(args=argv)
    path = plot_passk(a.result_dirs, a.output, labels=a.labels, benchmarks=a.benchmarks, judge=a.judge)
    print(f"wrote {path}")
    return {"plot": str(path)}


def main(argv: list[str] | None = None) -> dict:
    """Entry point of `s2l-eval` (and `python eval/run_evaluation.py`); ``plot`` as first word draws curves."""
    argv = list(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if argv and argv[0] == "plot":
        return plot(argv[1:])
    from ..evaluation.runner import run_evaluation

    (args,) = make_parser().parse_args_and_config(args=argv)
    summary = run_evaluation(args)
    print(f"\n{args.run_name}  (mode={args.mode}, k={args.k}; results in {args.result_dir})")
    for bench, row in summary["benchmarks"].items():
        n = args.k
        print(
            f"  {bench:<14} pass@1 {100 * row['pass@1']:6.2f}   pass@{n} {100 * row.get(f'pass@{n}', 0):6.2f}   "
            f"official_compat pass@1 {100 * row['official_compat_pass@1']:6.2f}   ({row['num_problems']} problems)"
        )
    return summary


def command() -> None:
    """The `s2l-eval` console command: bad input ends with one line on stderr and exit status 2 (`--debug` or
    `S2L_DEBUG=1` for the traceback); `main` raises instead, for Python callers."""
    run_cli("s2l-eval", main)


if __name__ == "__main__":
    command()
