"""The offline rollout store: converted once into a memory-mapped Arrow table and cached by the file's identity
(hit, miss, changed file, torn conversion, two processes at once), only the drawn rows materialised, problems named
by file:line deep in a file and from the cache, one message for unusable folders and non-UTF-8 files, progress that
a user sees, one warning for prompts with too few rollouts, and the documented, deterministic draws."""

from __future__ import annotations

import json
import logging
import os
import random
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from s2l_trl.explorers import ExplorerError, OfflineExplorer, read_rollouts
from s2l_trl.explorers import rollout_store as rs
from s2l_trl.explorers.rollout_store import RolloutStore

REPO = Path(__file__).resolve().parents[1]


def _row(pid: str, k: int, **extra) -> dict:
    ids = [(k * 7 + j) % 97 for j in range(3 + k % 4)]
    row = {
        "prompt_id": pid,
        "prompt": [{"role": "user", "content": f"Problem {pid}"}],
        "prompt_ids": [1, 2, int(pid[1:]) % 50],
        "response": f"answer {k}",
        "response_ids": ids,
        "small_model_log_probs": [-0.5 - j / 8 for j in range(len(ids))],
        "reward": 0.0,
        "is_correct": False,
        "data_source": "test",
        "ground_truth": "1",
    }
    row.update(extra)
    return row


def _rows(prompts: int, per_prompt: int) -> list[dict]:
    # Interleaved (as merged shards are): the rows of a prompt are not contiguous in the file.
    return [_row(f"p{p}", k * prompts + p) for k in range(per_prompt) for p in range(prompts)]


def _write(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _entries(cache_dir: Path) -> list[str]:
    return sorted(p.name for p in cache_dir.iterdir() if p.is_dir())


@pytest.fixture
def conversions(monkeypatch):
    """How many times a file was converted (in memory or to the cache)."""
    calls = []
    run = rs.conversion._Converter.run

    def counting(self):
        calls.append(self.source.path)
        return run(self)

    monkeypatch.setattr(rs.conversion._Converter, "run", counting)
    return calls


def test_converted_once_then_loaded_from_the_cache_until_the_file_changes(tmp_path, conversions):
    path = _write(tmp_path / "r.jsonl", _rows(5, 4))
    cache = tmp_path / "cache"
    first = OfflineExplorer(path, cache_dir=cache, cache=True)
    assert len(conversions) == 1 and len(_entries(cache)) == 1
    assert first.store.cache_path == cache / _entries(cache)[0]
    again = OfflineExplorer(path, cache_dir=cache, cache=True)
    assert len(conversions) == 1  # a hit: nothing converted
    inputs = [{"prompt_id": f"p{p}"} for p in range(5)]
    assert again.generate([[0]] * 5, 4, inputs=inputs) == first.generate([[0]] * 5, 4, inputs=inputs)

    # Appended rows (s2l-sample resuming) change size and mtime: converted again, the stale entry removed.
    with path.open("a") as f:
        f.write(json.dumps(_row("p9", 99)) + "\n")
    changed = OfflineExplorer(path, cache_dir=cache, cache=True)
    assert len(conversions) == 2 and len(_entries(cache)) == 1
    assert changed.missing([{"prompt_id": "p9"}]) == [] and first.missing([{"prompt_id": "p9"}]) == ["prompt_id='p9'"]

    # A same-size edit near the end with the old mtime put back is still seen (the identity hashes head and tail).
    stat = path.stat()
    text = path.read_text()
    path.write_text(text.replace('"Problem p9"', '"Problem q9"'))
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert path.stat().st_size == stat.st_size
    OfflineExplorer(path, cache_dir=cache, cache=True)
    assert len(conversions) == 3

    # Small files are converted in memory by default: nothing is written to the cache.
    before = _entries(cache)
    OfflineExplorer(path, cache_dir=cache)
    assert _entries(cache) == before and len(conversions) == 4


def test_a_torn_conversion_is_never_read_and_is_redone(tmp_path, conversions):
    path = _write(tmp_path / "r.jsonl", _rows(40, 4))
    cache = tmp_path / "cache"
    # A conversion killed (SIGKILL) in the middle of writing, in its own process.
    script = (
        "import sys, time\n"
        "from s2l_trl.explorers import rollout_store as rs\n"
        "rs.sources._BATCH_BYTES = 2000\n"
        "batch = rs.conversion._Converter._batch\n"
        "def slow(self, *a):\n"
        "    batch(self, *a)\n"
        "    print('batch written', flush=True)\n"
        "    time.sleep(30)\n"
        "rs.conversion._Converter._batch = slow\n"
        f"rs.RolloutStore.open({str(path)!r}, cache_dir={str(cache)!r}, cache=True)\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True, cwd=REPO)
    try:
        assert proc.stdout.readline().strip() == "batch written"
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    torn = [p for p in cache.iterdir() if p.is_dir()]
    assert torn and all(p.name.startswith(".") for p in torn)  # only a temporary folder: no entry was published
    assert any((p / "rows.arrow").stat().st_size > 0 for p in torn)

    explorer = OfflineExplorer(path, cache_dir=cache, cache=True)
    assert len(conversions) == 1
    assert [p.name.startswith(".") for p in cache.iterdir() if p.is_dir()] == [False]  # the torn folder is gone
    assert explorer.missing([{"prompt_id": f"p{p}"} for p in range(40)]) == []

    # An entry whose table was cut short after it was published is not trusted either.
    rows_file = explorer.store.cache_path / "rows.arrow"
    explorer.close()
    with rows_file.open("r+b") as f:
        f.truncate(rows_file.stat().st_size // 2)
    OfflineExplorer(path, cache_dir=cache, cache=True)
    assert len(conversions) == 2


def test_two_processes_convert_a_file_once(tmp_path):
    path = _write(tmp_path / "r.jsonl", _rows(30, 4))
    cache = tmp_path / "cache"
    script = (
        "import sys, time\n"
        "from s2l_trl.explorers import rollout_store as rs\n"
        "convert = rs.RolloutStore._convert_to.__func__\n"
        "def slow(cls, *a):\n"
        "    print('converted', flush=True)\n"
        "    time.sleep(3)\n"
        "    return convert(cls, *a)\n"
        "rs.RolloutStore._convert_to = classmethod(slow)\n"
        f"store = rs.RolloutStore.open({str(path)!r}, cache_dir={str(cache)!r}, cache=True)\n"
        "print('rows', store.num_rows, flush=True)\n"
    )
    procs = [subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True) for _ in range(2)]
    outputs = [p.communicate(timeout=300)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs), outputs
    assert sum(out.count("converted") for out in outputs) == 1
    assert all("rows 120" in out for out in outputs)


def test_a_request_materialises_only_the_rows_it_draws(tmp_path):
    path = _write(tmp_path / "r.jsonl", _rows(200, 4))
    explorer = OfflineExplorer(path, cache_dir=tmp_path / "cache", cache=True)
    assert explorer.store.rows_read == 0  # opening reads no row
    assert explorer.missing([{"prompt_id": f"p{p}"} for p in range(200)], n=4) == []
    assert explorer.store.rows_read == 0  # nor does the coverage check
    out = explorer.generate([[0], [0]], 3, inputs=[{"prompt_id": "p17"}, {"prompt_id": "p150"}])
    assert explorer.store.rows_read == 6 and len(out.completion_ids) == 6
    stored = {tuple(r["response_ids"]) for r in _rows(200, 4) if r["prompt_id"] in ("p17", "p150")}
    assert set(map(tuple, out.completion_ids)) <= stored
    assert explorer.stored_prompt_ids({"prompt_id": "p17"}) == [1, 2, 17]
    assert explorer.store.rows_read == 7


def test_draws_follow_the_documented_scheme_in_every_format(tmp_path):
    """Request k, group g draws `random.Random(f"s2l-offline:{seed}:{k}:{g}").sample(rows of the prompt in file order,
    n)`, g being the prompt's label and its occurrence in the request when the rows carry no group id: the same draws
    from JSONL, parquet and save_to_disk, cached or not."""
    import datasets

    rows = _rows(6, 5)
    jsonl = _write(tmp_path / "r.jsonl", rows)
    ds = datasets.Dataset.from_list(rows)
    ds.to_parquet(str(tmp_path / "r.parquet"))
    ds.save_to_disk(str(tmp_path / "r_ds"))
    inputs = [{"prompt_id": f"p{p}"} for p in (3, 0, 5)]

    def expected(seed: int, request: int, n: int) -> list[list[int]]:
        out = []
        for example in inputs:
            rng = random.Random(f"s2l-offline:{seed}:{request}:prompt_id={example['prompt_id']!r}#0")
            mine = [r for r in rows if r["prompt_id"] == example["prompt_id"]]
            out += [r["response_ids"] for r in rng.sample(mine, n)]
        return out

    for source, cache in [(jsonl, False), (jsonl, True), (tmp_path / "r.parquet", True), (tmp_path / "r_ds", True)]:
        explorer = OfflineExplorer(source, seed=11, cache_dir=tmp_path / "cache", cache=cache)
        for request in range(3):
            out = explorer.generate([[0]] * 3, 4, inputs=inputs)
            assert out.completion_ids == expected(11, request, 4), (source, cache, request)
        # Log-probs come back as stored (float32), aligned with the ids.
        by_ids = {tuple(r["response_ids"]): r["small_model_log_probs"] for r in rows}
        for ids, lps in zip(out.completion_ids, out.logprobs):
            assert lps == pytest.approx(by_ids[tuple(ids)], rel=1e-6)


def test_problems_deep_in_a_big_file_name_their_lines(tmp_path, monkeypatch):
    monkeypatch.setattr(rs.sources, "_BATCH_BYTES", 4096)  # many conversion batches
    rows = _rows(500, 6)  # 3,000 lines
    rows[2987]["response_ids"] = [3, "4"]
    rows[2990].update(response_ids=[3, 700], small_model_log_probs=[-1.0, -2.0])
    lines = [json.dumps(r) for r in rows]
    lines[2994] = '{"prompt": "cut'
    path = tmp_path / "r.jsonl"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(ExplorerError) as info:
        OfflineExplorer(path, vocab_size=512, cache_dir=tmp_path / "cache", cache=True)
    message = str(info.value)
    assert message.startswith(f"3 invalid rollout row(s) in {path}:")
    assert "r.jsonl:2988: response_ids must be a list of integer token ids." in message
    assert "r.jsonl:2991: response_ids holds token id 700, outside the vocabulary (size 512)." in message
    assert "r.jsonl:2995: malformed JSON line (Unterminated string starting at)." in message
    assert not _entries(tmp_path / "cache")  # a broken file is not cached

    # Fixed structure: the table is cached; a run with a smaller vocabulary is refused from the cache as well.
    lines[2987], lines[2994] = json.dumps(_row("p487", 1)), json.dumps(_row("p494", 1))
    path.write_text("\n".join(lines) + "\n")
    for _ in range(2):
        with pytest.raises(ExplorerError, match=r"1 invalid rollout row\(s\)[^\n]*\n  \S*r\.jsonl:2991: response_ids"):
            OfflineExplorer(path, vocab_size=512, cache_dir=tmp_path / "cache", cache=True)
    assert len(_entries(tmp_path / "cache")) == 1
    OfflineExplorer(path, vocab_size=1024, cache_dir=tmp_path / "cache", cache=True)

    # Every problem counted, the first 20 listed.
    many = [json.dumps(_row(f"p{i}", i, response_ids=[True])) for i in range(25)]
    bad = tmp_path / "many.jsonl"
    bad.write_text("\n".join(many) + "\n")
    with pytest.raises(ExplorerError) as info:
        OfflineExplorer(bad)
    assert "25 invalid rollout row(s)" in str(info.value) and "... and 5 more" in str(info.value)
    assert "many.jsonl:20:" in str(info.value) and "many.jsonl:21:" not in str(info.value)


def test_a_folder_that_is_not_a_saved_dataset_is_named_with_what_is_expected(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ExplorerError) as info:
        OfflineExplorer(empty)
    message = str(info.value)
    assert message.startswith(f"explorer_rollouts: {str(empty)!r} is a folder")
    assert "it is empty" in message and "save_to_disk" in message and "JSONL file" in message and ".parquet" in message

    sampled = tmp_path / "sampled"
    sampled.mkdir()
    _write(sampled / "rollouts.jsonl", _rows(2, 2))
    with pytest.raises(ExplorerError, match=r"it holds rollouts\.jsonl: pass that file instead"):
        OfflineExplorer(sampled)

    import datasets

    ds = datasets.Dataset.from_list(_rows(2, 2))
    datasets.DatasetDict({"train": ds, "test": ds}).save_to_disk(str(tmp_path / "dd"))
    with pytest.raises(ExplorerError, match=r"DatasetDict with the splits \['train', 'test'\]; name one"):
        OfflineExplorer(tmp_path / "dd")
    datasets.DatasetDict({"train": ds}).save_to_disk(str(tmp_path / "one"))
    assert OfflineExplorer(tmp_path / "one").missing([{"prompt_id": "p0"}, {"prompt_id": "p1"}]) == []


def test_rollouts_that_are_not_utf8_name_the_line(tmp_path):
    path = tmp_path / "latin1.jsonl"
    lines = [json.dumps(_row("p0", 0)).encode(), json.dumps(_row("p1", 1), ensure_ascii=False).encode()]
    lines[1] = lines[1].replace(b"answer 1", "réponse".encode("latin-1"))
    path.write_bytes(b"\n".join(lines) + b"\n")
    with pytest.raises(ExplorerError, match=r"latin1\.jsonl:2: the file is not UTF-8: byte 0xe9"):
        OfflineExplorer(path)
    with pytest.raises(ExplorerError, match=r"latin1\.jsonl:2: the file is not UTF-8"):
        read_rollouts(path)


def test_progress_lines_reach_a_user_who_configured_no_logging(tmp_path, monkeypatch, capsys, caplog):
    monkeypatch.setattr(rs.progress, "PROGRESS_INTERVAL_S", 0.0)
    monkeypatch.setattr(rs.sources, "_BATCH_BYTES", 4096)
    path = _write(tmp_path / "r.jsonl", _rows(60, 4))
    size = path.stat().st_size
    # No logging configured (the Python API): the lines go to stderr, as datasets' progress bars do.
    OfflineExplorer(path, cache_dir=tmp_path / "c1", cache=True)
    err = capsys.readouterr().err
    assert f"[s2l_trl] Converting rollouts {path}:" in err
    assert f"/ {size / 1e9:.2f} GB" in err and "rows" in err and "MB/s" in err
    assert f"[s2l_trl] Converted rollouts {path}: 240 rows" in err
    # INFO enabled: through logging instead, not twice.
    with caplog.at_level(logging.INFO, logger="s2l_trl.explorers.rollout_store"):
        OfflineExplorer(path, cache_dir=tmp_path / "c2", cache=True)
    assert any(r.getMessage().startswith(f"Converting rollouts {path}:") for r in caplog.records)
    assert "[s2l_trl]" not in capsys.readouterr().err
    # datasets' switch for progress bars silences the stderr lines.
    import datasets

    datasets.disable_progress_bars()
    try:
        OfflineExplorer(path, cache_dir=tmp_path / "c3", cache=True)
    finally:
        datasets.enable_progress_bars()
    assert "[s2l_trl]" not in capsys.readouterr().err


def test_progress_lines_are_seen_from_s2l_train(tiny, tmp_path):
    """The logging `s2l-train` sets up (root handler at WARNING) still shows the conversion's progress."""
    from trainer_utils import write_oracle_rollouts

    rollouts = write_oracle_rollouts(tiny, tmp_path / "oracle.jsonl")
    script = (
        "from s2l_trl.explorers import rollout_store as rs\n"
        "rs.progress.PROGRESS_INTERVAL_S = 0.0\n"
        "rs.sources._BATCH_BYTES = 2048\n"
        "from s2l_trl.cli.train import cli\n"
        "import sys\n"
        "cli(sys.argv[1:])\n"
    )
    argv = [
        "--config",
        str(REPO / "recipes" / "tiny" / "s2l_po" / "config_cpu.yaml"),
        "--model_name_or_path",
        str(tiny["learner"]),
        "--dataset_name",
        str(tiny["dataset"]),
        "--output_dir",
        str(tmp_path / "run"),
        "--max_steps",
        "1",
        "--disable_tqdm",
        "true",
        "--explorer_mode",
        "offline",
        "--explorer_rollouts",
        str(rollouts),
        "--explorer_model",  # the recipe's .tiny/explorer is not built here: an explorer_model must load
        str(tiny["explorer"]),
    ]
    env = {**os.environ, "HF_DATASETS_CACHE": str(tmp_path / "hf"), "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [sys.executable, "-c", script, *argv], capture_output=True, text=True, timeout=600, cwd=REPO, env=env
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"[s2l_trl] Converting rollouts {rollouts}:" in done.stderr
    assert f"[s2l_trl] Converted rollouts {rollouts}:" in done.stderr


def test_prompts_with_too_few_rollouts_are_warned_about_once(tmp_path, caplog):
    rows = _rows(10, 4) + [_row("p10", 1), _row("p11", 2), _row("p11", 3)]  # p10: 1 rollout, p11: 2
    path = _write(tmp_path / "r.jsonl", rows)
    examples = [{"prompt_id": f"p{p}"} for p in range(12)]
    explorer = OfflineExplorer(path)
    with caplog.at_level(logging.WARNING):
        assert explorer.missing(examples, n=4) == []
        for _ in range(3):
            out = explorer.generate([[0]] * 12, 4, inputs=examples)
            assert len(out.completion_ids) == 48
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1, warnings
    assert (
        "2 of the 12 training prompts have fewer than 4 stored rollouts (the fewest: 1, for prompt_id='p10')"
        in (warnings[0])
    )
    assert "drawn with replacement" in warnings[0]
    # p10's four rows are its one rollout, four times.
    assert out.completion_ids[40:44] == [_row("p10", 1)["response_ids"]] * 4

    # Without the start-up summary, the first short prompt warns, once for the whole run.
    caplog.clear()
    quiet = OfflineExplorer(path)
    with caplog.at_level(logging.WARNING):
        for _ in range(3):
            quiet.generate([[0]] * 12, 4, inputs=examples)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "only 1 rollouts for prompt_id='p10'" in warnings[0]
    assert "missing(examples, n=4)" in warnings[0]


def test_cache_folder_that_cannot_be_written_is_named(tmp_path):
    path = _write(tmp_path / "r.jsonl", _rows(2, 2))
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(ExplorerError, match=r"Cannot write the converted rollouts of .* pass a writable cache_dir"):
        RolloutStore.open(path, cache_dir=blocker / "cache", cache=True)


def test_progress_lines_are_throttled():
    # About one line per PROGRESS_INTERVAL_S (10 s): none before the interval has passed.
    progress = rs.Progress("x", 100, "rows")
    progress.last = time.monotonic()
    progress.update(50, 50)
    assert not progress.reported


@pytest.mark.parametrize("cache", [False, True], ids=["in-memory", "cached"])
def test_impossible_log_probs_are_refused_naming_file_and_line(tmp_path, cache):
    rows = _rows(2, 4)
    rows[1]["small_model_log_probs"] = [None] * len(rows[1]["response_ids"])  # unknown (null): fine
    rows[2]["small_model_log_probs"] = [0.4, 0.9, 0.6]  # 3: probabilities
    rows[4]["small_model_log_probs"] = [-0.2, 1.5, -0.1]  # 5: positive
    rows[6]["small_model_log_probs"] = [-0.2, float("-inf"), -0.1]  # 7: -Infinity in the JSON
    rows[7]["small_model_log_probs"] = [-9999.0] * len(rows[7]["response_ids"])  # 8: vLLM's -inf
    for r in (2, 4, 6):
        rows[r]["response_ids"] = rows[r]["response_ids"][:3]
    path = _write(tmp_path / "lp.jsonl", rows)
    cache_dir = tmp_path / "cache"
    with pytest.raises(ExplorerError) as info:
        OfflineExplorer(path, cache_dir=cache_dir, cache=cache)
    message = str(info.value)
    assert "4 invalid rollout row(s)" in message
    assert "lp.jsonl:3: small_model_log_probs holds 0.4 at token 0" in message and "probabilities stored" in message
    assert "lp.jsonl:5: small_model_log_probs holds 1.5 at token 1" in message
    assert "lp.jsonl:7: small_model_log_probs holds -inf at token 1" in message
    assert "lp.jsonl:8: small_model_log_probs holds -9999 at token 0" in message
    assert "lp.jsonl:2:" not in message and "finite and <= 0" in message
    assert not cache_dir.exists() or _entries(cache_dir) == []  # a broken file is never cached
    # The small-file reader applies the same rule.
    with pytest.raises(ExplorerError, match=r"lp\.jsonl:3: small_model_log_probs: 3 of 3 log-probs are impossible"):
        read_rollouts(path)


def test_a_same_size_corruption_of_the_cache_is_detected_and_converted_again(tmp_path, conversions, caplog):
    """Bytes changed inside rows.arrow (a bad disk, an edit) keep its size: the checksum in meta.json catches it."""
    path = _write(tmp_path / "r.jsonl", _rows(64, 8))
    cache = tmp_path / "cache"
    explorer = OfflineExplorer(path, cache_dir=cache, cache=True)
    rows_file = explorer.store.cache_path / "rows.arrow"
    good = explorer.store.read(range(explorer.store.num_rows), ("response_ids",))
    explorer.close()
    data = bytearray(rows_file.read_bytes())
    # Flip token ids in the middle of the file (the values buffer of response_ids), as a bad sector would.
    middle = len(data) // 2
    data[middle : middle + 16] = bytes(b ^ 0x5A for b in data[middle : middle + 16])
    rows_file.write_bytes(bytes(data))
    assert rows_file.stat().st_size == len(data)
    with caplog.at_level(logging.WARNING, logger="s2l_trl.explorers.rollout_store"):
        again = OfflineExplorer(path, cache_dir=cache, cache=True)
    assert len(conversions) == 2 and "does not match the checksum recorded" in caplog.text
    assert again.store.read(range(again.store.num_rows), ("response_ids",)) == good


def _without_logprobs(rows: list[dict], which) -> list[dict]:
    for i, row in enumerate(rows):
        if which(i):
            row["small_model_log_probs"] = None if i % 2 else [None] * len(row["response_ids"])
    return rows


def test_importance_sampling_on_rollouts_without_log_probs_is_refused_at_start(tmp_path, caplog):
    needed = "explorer_importance_sampling='token_truncate'"
    none = _write(tmp_path / "none.jsonl", [{**r, "small_model_log_probs": None} for r in _rows(3, 2)])
    with pytest.raises(ExplorerError) as info:
        OfflineExplorer(none, logprobs_needed_by=needed)
    message = str(info.value)
    assert message.startswith(needed) and "none.jsonl (6 rows) have no small_model_log_probs" in message
    assert "explorer_importance_sampling='none' and explorer_off_policy_mask=False" in message
    all_nan = _write(tmp_path / "nan.jsonl", _without_logprobs(_rows(3, 2), lambda i: True))
    with pytest.raises(ExplorerError, match=r"nan\.jsonl \(6 rows\) hold only null / NaN small_model_log_probs"):
        OfflineExplorer(all_nan, logprobs_needed_by=needed)
    OfflineExplorer(all_nan)  # nothing weighs them: fine
    # Some rows without: loaded, with a warning that counts them.
    partial = _write(tmp_path / "partial.jsonl", _without_logprobs(_rows(3, 2), lambda i: i < 2))
    with caplog.at_level(logging.WARNING, logger="s2l_trl.explorers.offline"):
        OfflineExplorer(partial, logprobs_needed_by=needed)
    assert "partial.jsonl" in caplog.text and "(1 of 6 rows store none)" in caplog.text and needed in caplog.text
    assert re.search(r"\d+ of the \d+ stored response tokens have no log-prob", caplog.text)
