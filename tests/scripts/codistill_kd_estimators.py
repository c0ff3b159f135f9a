"""Which KD update distils a small model toward a frozen large one, close and far apart? (docs/codistill.md)

A standalone comparison of per-token KD estimators, outside the trainer (plain REINFORCE on the small model's own
samples, one on-policy update per batch, AdamW lr 1e-3, 40 steps of 8 prompts x 4 samples, 16 tokens), so that
estimators CoDistill does not ship can be measured too:

* `token`: advantage `r_t = log pi_large(y_t) - log pi_small(y_t)` (no baseline; CoDistill's `kd_baseline="none"`);
* `token_batch_baseline`: `r_t - mean(r)` over the batch's tokens (CoDistill's default `kd_baseline="mean"`);
* `token_whiten`: `(r_t - mean(r)) / std(r)`;
* `vocab`: the exact reverse KL over the vocabulary at the sampled positions (on-policy distillation).

The large model is the width-64 tiny model taught the answer format; small models: `far` the random width-32 tiny
model, `mid` the width-32 model after 12 steps of the same teaching, `close` after 150 steps. Distance: exact
KL(small || large) per token on 64 prompts x 4 of the small model's samples (fixed seed).

    python tests/scripts/codistill_kd_estimators.py {far,mid,close} MODE SEED [LR]

prints one JSON line (the KL before and after every 10 steps). Models are built under /tmp/codistill_kd_estimators.
"""

import json
import random
import sys
import time
from pathlib import Path

import torch

torch.set_num_threads(1)
from transformers import AutoModelForCausalLM, AutoTokenizer  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from s2l_trl.devtools.tiny import build_model, build_tiny_setup, make_addition_rows, warm_start  # noqa: E402

root = Path("/tmp/codistill_kd_estimators")
paths = build_tiny_setup(root)
teacher_dir = root / "teacher"
if not (teacher_dir / "config.json").exists():
    build_model(teacher_dir, paths["tokenizer"], hidden_size=64, num_layers=2, seed=5)
    warm_start(teacher_dir, steps=150, seed=5)
mid_dir = root / "mid"
if not (mid_dir / "config.json").exists():
    build_model(mid_dir, paths["tokenizer"], hidden_size=32, num_layers=1, seed=7)
    warm_start(mid_dir, steps=12, seed=7)
close_dir = root / "close"
if not (close_dir / "config.json").exists():
    build_model(close_dir, paths["tokenizer"], hidden_size=32, num_layers=1, seed=7)
    warm_start(close_dir, steps=150, seed=7)
tok = AutoTokenizer.from_pretrained(paths["tokenizer"])
rows = make_addition_rows(64, seed=0)
prompts = [
    tok.apply_chat_template(r["prompt"], add_generation_prompt=True, tokenize=True, return_dict=True)["input_ids"]
    for r in rows
]
EOS = tok.eos_token_id
PAD = tok.pad_token_id


def batch(model, idx, G, T, gen):
    ps = [prompts[i] for i in idx for _ in range(G)]
    w = max(map(len, ps))
    ids = torch.full((len(ps), w), PAD)
    att = torch.zeros_like(ids)
    for k, p in enumerate(ps):
        ids[k, w - len(p) :] = torch.tensor(p)
        att[k, w - len(p) :] = 1
    with torch.no_grad():
        out = model.generate(
            input_ids=ids,
            attention_mask=att,
            do_sample=True,
            max_new_tokens=T,
            top_k=0,
            top_p=1.0,
            pad_token_id=PAD,
            eos_token_id=EOS,
        )
    comp = out[:, w:]
    mask = torch.ones_like(comp)
    for k in range(comp.size(0)):
        e = (comp[k] == EOS).nonzero()
        if len(e):
            mask[k, e[0, 0] + 1 :] = 0
    full = torch.cat([ids, comp], 1)
    fatt = torch.cat([att, mask], 1)
    return full, fatt, comp, mask, w


def logits_of(model, full, fatt, w):
    return model(input_ids=full, attention_mask=fatt).logits[:, w - 1 : -1].float()


def run(student_dir, mode, coef=1.0, steps=40, lr=1e-4, seed=0):
    torch.manual_seed(seed)
    rng = random.Random(seed)
    s = AutoModelForCausalLM.from_pretrained(student_dir)
    t = AutoModelForCausalLM.from_pretrained(teacher_dir)
    t.eval()
    s.train()
    opt = torch.optim.AdamW(s.parameters(), lr=lr, weight_decay=0.0)
    curve = []

    def evaluate():
        state = torch.get_rng_state()
        torch.manual_seed(1234)
        full, fatt, comp, mask, w = batch(s, list(range(64)), 4, 16, None)
        torch.set_rng_state(state)
        with torch.no_grad():
            ls = torch.log_softmax(logits_of(s, full, fatt, w), -1)
            lt = torch.log_softmax(logits_of(t, full, fatt, w), -1)
            kl = (ls.exp() * (ls - lt)).sum(-1)
        return float((kl * mask).sum() / mask.sum())

    curve.append(evaluate())
    for step in range(steps):
        idx = rng.sample(range(64), 8)
        full, fatt, comp, mask, w = batch(s, idx, 4, 16, None)
        with torch.no_grad():
            lt = torch.log_softmax(logits_of(t, full, fatt, w), -1)
        ls_all = torch.log_softmax(logits_of(s, full, fatt, w), -1)
        lp_s = ls_all.gather(-1, comp.unsqueeze(-1)).squeeze(-1)
        lp_t = lt.gather(-1, comp.unsqueeze(-1)).squeeze(-1)
        m = mask.float()
        n = m.sum()
        r = (lp_t - lp_s).detach()
        if mode == "token":  # dense reward, no baseline (today's)
            adv = coef * r
            loss = -(adv * lp_s * m).sum() / n
        elif mode == "token_batch_baseline":
            b = (r * m).sum() / n
            loss = -(coef * (r - b) * lp_s * m).sum() / n
        elif mode == "token_whiten":
            b = (r * m).sum() / n
            sd = (((r - b) ** 2 * m).sum() / n).sqrt().clamp(min=1e-6)
            loss = -(coef * (r - b) / sd * lp_s * m).sum() / n
        elif mode == "token_row_baseline":
            b = (r * m).sum(1, keepdim=True) / m.sum(1, keepdim=True).clamp(min=1)
            loss = -(coef * (r - b) * lp_s * m).sum() / n
        elif mode == "token_position_baseline":  # b_t = E_{v~p_s}[r(v)] = -KL_t (needs full vocab)
            b = (ls_all.exp() * (lt - ls_all)).sum(-1).detach()
            loss = -(coef * (r - b) * lp_s * m).sum() / n
        elif mode == "vocab":  # exact reverse KL over the vocabulary at the sampled positions
            kl = (ls_all.exp() * (ls_all - lt)).sum(-1)
            loss = coef * (kl * m).sum() / n
        opt.zero_grad()
        loss.backward()
        opt.step()
        if (step + 1) % 10 == 0:
            curve.append(evaluate())
    return curve


if __name__ == "__main__":
    regime, mode = sys.argv[1], sys.argv[2]
    seed = int(sys.argv[3]) if len(sys.argv) > 3 else 0
    lr = float(sys.argv[4]) if len(sys.argv) > 4 else 1e-4
    student = {"far": paths["explorer"], "mid": mid_dir, "close": close_dir}[regime]
    t0 = time.time()
    c = run(student, mode, seed=seed, lr=lr)
    print(
        json.dumps(
            {
                "regime": regime,
                "mode": mode,
                "seed": seed,
                "lr": lr,
                "kl": [round(x, 3) for x in c],
                "s": round(time.time() - t0),
            }
        )
    )
