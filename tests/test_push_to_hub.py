"""`trainer.push_to_hub()` without network: everything up to the upload call, and the card it would upload.

huggingface_hub has no local stand-in Hub server (its tests use the hub-ci staging endpoint, which needs network),
so the two Hub calls `Trainer.push_to_hub` makes through `transformers.utils.hub.hf_api()` (`HfApi.create_repo` for
the repo id, `HfApi.upload_folder` for the upload) are replaced by recorders; every step before them is the real one.
"""

from __future__ import annotations

from pathlib import Path

import yaml
from huggingface_hub import HfApi, RepoUrl
from trainer_utils import s2l_args, tiny_dataset, write_oracle_rollouts

from s2l_trl import S2LTrainer
from s2l_trl.model_card import SECTION_TITLE
from s2l_trl.rewards import accuracy_reward

HUB_ID = "someone/tiny-s2l-po"


def test_push_to_hub_uploads_output_dir_with_s2l_card(tiny, tmp_path, monkeypatch):
    calls = {"create_repo": [], "upload_folder": []}

    def create_repo(self, repo_id, **kwargs):
        calls["create_repo"].append((repo_id, kwargs))
        return RepoUrl(f"https://huggingface.co/{repo_id}")

    def upload_folder(self, **kwargs):
        # Read the folder at upload time: that is what would reach the Hub.
        folder = Path(kwargs["folder_path"])
        calls["upload_folder"].append(
            {**kwargs, "files": sorted(p.name for p in folder.iterdir()), "readme": (folder / "README.md").read_text()}
        )
        return "https://huggingface.co/someone/tiny-s2l-po/commit/0"

    monkeypatch.setattr(HfApi, "create_repo", create_repo)
    monkeypatch.setattr(HfApi, "upload_folder", upload_folder)

    rollouts = write_oracle_rollouts(tiny, tmp_path / "oracle.jsonl")
    # push_to_hub=False: with True the Trainer would create the repo at init and push every save; the explicit
    # push_to_hub() call below is the path `s2l-train` takes at the end of a run with `--push_to_hub`.
    args = s2l_args(
        tmp_path, rollouts, max_steps=2, mix_steps=2, hub_model_id=HUB_ID, explorer_model=str(tiny["explorer"])
    )
    trainer = S2LTrainer(str(tiny["learner"]), [accuracy_reward], args=args, train_dataset=tiny_dataset(tiny))
    assert calls["create_repo"] == []  # nothing touched the Hub at init
    trainer.train()
    result = trainer.push_to_hub(dataset_name="tiny-addition")

    assert result == "https://huggingface.co/someone/tiny-s2l-po/commit/0"
    assert [repo_id for repo_id, _ in calls["create_repo"]] == [HUB_ID]
    (upload,) = calls["upload_folder"]
    assert upload["repo_id"] == HUB_ID
    assert Path(upload["folder_path"]) == Path(args.output_dir)
    assert upload["commit_message"] == "End of training"
    assert "model.safetensors" in upload["files"] and "README.md" in upload["files"]

    card = upload["readme"]
    _, header, body = card.split("---", 2)
    meta = yaml.safe_load(header)
    assert "s2l-po" in meta["tags"]
    assert meta["datasets"] in ("tiny-addition", ["tiny-addition"])  # huggingface_hub stores one id as a scalar
    assert meta["s2l_po"]["explorer_model"] == str(tiny["explorer"])
    assert meta["s2l_po"]["explorer_mode"] == "offline"
    assert meta["s2l_po"]["mix_steps"] == 2
    assert SECTION_TITLE in body
    assert f"`{tiny['explorer']}` (offline)" in body
    assert "step 1: 4, step 2: 0" in body
    # TRL's own card parts survive: the Hub id in the usage snippet and the paper link.
    assert HUB_ID in body
    assert "https://huggingface.co/papers/2605.30789" in body
