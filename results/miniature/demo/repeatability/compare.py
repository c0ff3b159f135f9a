import json


def load(i, m):
    d = f"/tmp/s3/demo_runs_{i}/runs/{m}-seed0"
    r = json.load(open(f"{d}/run.json"))
    lh = json.load(open(f"{d}/trainer_state.json"))["log_history"]
    return r, [e for e in lh if "loss" in e and "step" in e]


for m in ("s2l_po", "grpo"):
    rs = [load(i, m) for i in (1, 2, 3)]
    print(m, "greedy per eval:", [[round(100 * e["greedy_accuracy"], 1) for e in r["evals"]] for r, _ in rs])
    print(m, "pass@1 per eval:", [[round(100 * e["pass@1"], 1) for e in r["evals"]] for r, _ in rs])
    keys = ("loss", "reward", "s2l/reward/explorer", "s2l/reward/learner")
    for k in keys:
        seqs = [[e.get(k) for e in lh] for _, lh in rs]
        first = next((s for s in range(len(seqs[0])) if len({str(x[s]) for x in seqs}) > 1), None)
        differs_at = None if first is None else rs[0][1][first]["step"]
        print(f"  {k}: identical across 3 runs: {seqs[0] == seqs[1] == seqs[2]}; first differing step: {differs_at}")
    ex = [sum(s["explorer_tokens"] for s in r["per_step"]) for r, _ in rs]
    print("  explorer tokens:", ex, "learner tokens:", [sum(s["learner_tokens"] for s in r["per_step"]) for r, _ in rs])
    print("  explorer_sampling:", rs[0][0].get("explorer_sampling"))
