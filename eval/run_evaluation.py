"""Run `s2l-eval` as a script: ``python eval/run_evaluation.py --model_path ... [--mode nothink] [--k 16]``.

Same flags as the `s2l-eval` console script (see ``--help``); ``python eval/run_evaluation.py plot ...`` draws
pass@k curves.
"""

from s2l_trl.cli.eval import command

if __name__ == "__main__":
    command()
