"""Build notebooks/01_reward_to_update.ipynb (run, then execute it with nbconvert)."""

from pathlib import Path

import nbformat as nbf

md, code = nbf.v4.new_markdown_cell, nbf.v4.new_code_cell
cells = [
    md("""# 1 · Reward model ⇒ parameter update

We have a **reward** r(x, y) — here VADER sentiment, a number in [−1, 1] for how positive a response is —
and a **policy** π0 (SmolLM2-135M-Instruct). Arrow 1 of the triangle turns the reward into a **parameter
update**: a new LoRA adapter π* on top of π0 whose responses score higher, without drifting too far.

**Eq. 1** (the objective): max_π E_{x~D, y~π(·|x)} [ r(x, y) ] − β · KL[ π(y|x) ‖ π0(y|x) ]

The first term asks for reward; the second is a leash to π0 of strength β. Eq. 1 has a closed-form optimum,

**Eq. 2**: π*(y|x) = π0(y|x) · exp(r(x, y)/β) / Z(x)

— re-weight every response of π0 by exp(reward/β). Small β: chase the reward; large β: stay at π0.
We never compute Z(x) (a sum over all texts); every method below approximates Eq. 2 differently:

| method | what it does |
|---|---|
| `best_of_n` | sample N from π0, keep the best: Eq. 2 at inference time, no training |
| `rejection_sft` | those best samples become supervised fine-tuning data |
| `dpo` / `kto` | best vs worst of N samples form preference pairs; DPO's loss is Eq. 2 solved for r and plugged into Bradley–Terry |
| `grpo` / `rloo` | on-policy RL: sample from the current π, push up what beats its group's average, KL to π0 |
"""),
    code("""# parameters: small defaults so the notebook runs in about a minute on a laptop CPU
N = 8               # best-of-N
STEPS = 8           # DPO optimiser steps (batch 4 pairs)
BETA = 0.1          # β of Eq. 1
MAX_NEW_TOKENS = 16
HACK_STEPS = 5      # steps of the reward-hacking run
RESUME_STEPS = 4    # steps of the small run that is stopped half-way and resumed (live: it writes checkpoints)
LIVE = False        # True reruns every training and search run live (minutes); False shows the shipped bakes
SEED = 0
# the six methods side by side: settings sized for about 3 minutes each on a 2-core CPU (one torch thread);
# on a GPU raise steps and samples (and max_new_tokens) — the same call runs there
METHODS = {
    "best_of_n":     dict(samples=8),
    "rejection_sft": dict(steps=10, learning_rate=3e-3),
    "dpo":           dict(steps=STEPS, learning_rate=3e-3),
    "kto":           dict(steps=20, learning_rate=1e-3),
    "grpo":          dict(steps=10, learning_rate=3e-3),
    "rloo":          dict(steps=10, learning_rate=3e-3),
}
EVAL_SAMPLES = 2    # held-out samples per input: 16 held-out inputs x 2 = 32 samples per mean""", metadata={"tags": ["parameters"]}),
    code("""import numpy as np
import triangle_nb as tnb
tnb.set_live(LIVE)  # a baked result says so: "baked <date> · <s> s on 1 CPU thread · LIVE=True reruns it"
from triangle_nb.arrows.reward_to_update import EXAMPLE_INPUTS, HELDOUT_INPUTS, BestOfN, length_hacking, split_inputs

pi0 = tnb.load_policy()
reward = tnb.rewards.Sentiment()
inputs = list(EXAMPLE_INPUTS)            # 24 neutral everyday prompts
train_xs, heldout = split_inputs(inputs, None, holdout=0.25, seed=SEED)
print(len(train_xs), "train inputs,", len(heldout), "held-out inputs, e.g.", heldout[:2])"""),
    md("""## Best-of-N: Eq. 2 without training

Draw N responses per input from π0 and keep the one with the highest reward. As N grows this approaches
the optimum of Eq. 1 for some β, and its KL to π0 is at most log N − (N−1)/N nats — a cheap, honest
baseline for every trained method. `BestOfN` is itself a policy wrapper with `.generate`.
We draw N samples once and compare the first one (N = 1, plain sampling) with the best of them, on
held-out inputs."""),
    code("""bon = BestOfN(pi0, reward, samples=N)
groups, r = bon.sample(heldout, max_new_tokens=MAX_NEW_TOKENS, seed=SEED)   # r: [inputs, N]
by_n = {k: float(r[:, :k].max(1).mean()) for k in (1, 2, 4, N)}
print({k: round(v, 2) for k, v in by_n.items()}, "KL bound at N:", round(bon.kl_bound, 2))
assert by_n[N] > by_n[1]"""),
    code("""# NBVAL_IGNORE_OUTPUT
i = int(np.argmax(r.max(1) - r[:, 0]))
print("x:", heldout[i])
print("N=1 :", round(float(r[i, 0]), 2), groups[i][0])
print(f"N={N}:", round(float(r[i].max()), 2), groups[i][int(r[i].argmax())])"""),
    md("""## DPO: a parameter update from the same reward

Solve Eq. 2 for the reward: r(x,y) = β log π*(y|x)/π0(y|x) + β log Z(x). In a preference pair the log Z
cancels, so the Bradley–Terry likelihood of "y+ beats y−" becomes a loss on the policy alone:

  L = −log σ( β [ (log π(y+|x) − log π0(y+|x)) − (log π(y−|x) − log π0(y−|x)) ] )

Pairs come from the reward: for each of 12 training inputs, the best and the worst of 4 samples of π0.
The reference π0 is the same weights with the adapter switched off (no second copy of the model). At step 1
π = π0, so the loss is exactly ln 2 ≈ 0.693. Metrics are measured on sampled responses of the held-out
inputs; the KL is a Monte-Carlo estimate E_{y~π*}[log π*(y|x) − log π0(y|x)] in nats."""),
    code("""res = tnb.reward_to_update(pi0, reward, train_xs[:12], eval_inputs=heldout, method="dpo", beta=BETA,
                           steps=STEPS, learning_rate=1e-3, max_new_tokens=MAX_NEW_TOKENS, eval_samples=3, eval_train=4,
                           seed=SEED)
m = res.metrics
print(res.info.get("provenance", "live run"))
print("loss at step 1:", round(float(res.history["loss"].iloc[0]), 4), " ln 2 =", round(float(np.log(2)), 4))
print(f"held-out reward {m['reward_heldout_before']:.2f} -> {m['reward_heldout_after']:.2f}, "
      f"KL {m['kl_heldout_after']:.2f} nats; train reward {m['reward_train_before']:.2f} -> {m['reward_train_after']:.2f}")
assert abs(res.history["loss"].iloc[0] - np.log(2)) < 1e-4
assert m["reward_heldout_after"] > m["reward_heldout_before"]
# every held-out sample is in res.samples with its reward: their means are exactly the metrics above
assert np.isclose(res.samples["reward_after"].mean(), m["reward_heldout_after"], rtol=0, atol=1e-12)"""),
    code("""# NBVAL_IGNORE_OUTPUT
res.plot()"""),
    code("""# NBVAL_IGNORE_OUTPUT
res.samples.head(4)   # every held-out sample of π0 and of π* (the DPO adapter), with its reward"""),
    code("""# NBVAL_IGNORE_OUTPUT
tnb.plots.reward_histograms(list(res.samples["reward_before"]), list(res.samples["reward_after"]))"""),
    md("""## Checkpoints and resuming

Training runs on transformers' `Trainer`, so a run writes checkpoints (`output_dir=`, every `save_steps`) and
continues from the last one (`resume_from_checkpoint=True`) — after a crash, a closed laptop or the panel's Stop.
Below, the same DPO run is stopped half-way by a callback (standing in for the crash), then resumed from its
checkpoint. The Trainer restores the adapter, the optimiser's moments, the schedule, the RNG and the position in the
data, so the resumed run ends with *exactly* the adapter of the uninterrupted run above. A checkpoint holds only the
new adapter (safetensors, a few MB), never the base model or other adapters."""),
    code("""import os, tempfile
from triangle_nb import training

run_dir = tempfile.mkdtemp(prefix="dpo-run-")
small = dict(eval_inputs=heldout[:2], method="dpo", beta=BETA, steps=RESUME_STEPS, samples=2, batch_size=2,
             learning_rate=1e-3, max_new_tokens=8, eval_samples=1, eval_train=0, seed=SEED)
on_disk = dict(output_dir=run_dir, training_args={"save_steps": RESUME_STEPS // 2})   # checkpoints: always live
full = tnb.reward_to_update(pi0, reward, train_xs[:4], **small)                  # the uninterrupted run
half = tnb.reward_to_update(pi0, reward, train_xs[:4], callbacks=[training.stop_at(RESUME_STEPS // 2)], **small, **on_disk)
resumed = tnb.reward_to_update(pi0, reward, train_xs[:4], resume_from_checkpoint=True, **small, **on_disk)

def lora(policy):
    tag = f".{policy.adapter}."
    return {k.replace(tag, "."): v for k, v in pi0.backbone.model.named_parameters() if tag in k}

a, b, c = lora(full.policy), lora(resumed.policy), lora(half.policy)
delta = max(float((a[k] - b[k]).abs().max()) for k in a)
print("stopped after", half.metrics["steps"], "steps, interrupted:", half.metrics["interrupted"])
print("checkpoint:", sorted(os.listdir(os.path.join(run_dir, f"checkpoint-{RESUME_STEPS // 2}"))))
print(f"resumed run vs uninterrupted run: max |Δw| = {delta:.1e}; the half-way adapter differs by "
      f"{max(float((a[k] - c[k]).abs().max()) for k in a):.1e}")"""),
    code("""# NBVAL_CHECK_OUTPUT
print("the resumed run ends where the uninterrupted one did:", delta < 1e-4)
print("it trained the remaining steps:", resumed.metrics["steps"] == RESUME_STEPS and not resumed.metrics["interrupted"])
assert delta < 1e-4 and resumed.metrics["steps"] == RESUME_STEPS"""),
    md("""## Six methods side by side

The same reward, the same 24 training inputs, the same β, and 16 **other** neutral prompts held out
(`HELDOUT_INPUTS`, never trained or tuned on), two samples each. Each method gets a budget of about three
minutes on a 2-core CPU (the `METHODS` settings above). Reward is the mean VADER sentiment of fresh samples;
KL is E_{y~π*}[log π*(y|x) − log π0(y|x)] in nats (for best-of-N the bound log N − (N−1)/N: it trains nothing)."""),
    code("""import pandas as pd
import plotly.graph_objects as go

runs, rows = {}, []

def run_method(method):   # one cell per method below: each stays well inside a notebook cell's time limit
    runs[method] = r_ = tnb.reward_to_update(pi0, reward, inputs, eval_inputs=list(HELDOUT_INPUTS), method=method,
                                             beta=BETA, max_new_tokens=MAX_NEW_TOKENS, eval_samples=EVAL_SAMPLES,
                                             eval_train=0, seed=SEED, **METHODS[method])
    m = r_.metrics
    rows.append({"method": method, "held-out reward before": m["reward_heldout_before"],
                 "after": m["reward_heldout_after"], "gain": m["reward_heldout_after"] - m["reward_heldout_before"],
                 "KL (nats)": m["kl_heldout_after"], "seconds": m["seconds"], "steps": m["steps"],
                 "one held-out sample after": r_.samples["after"].iloc[1],
                 "source": r_.info.get("provenance", "live run")})
    print(f"{method}: held-out {rows[-1]['held-out reward before']:.3f} -> {rows[-1]['after']:.3f}, "
          f"KL {rows[-1]['KL (nats)']:.2f}, {rows[-1]['seconds']:.0f} s")"""),
    code("""run_method("best_of_n")"""),
    code("""run_method("rejection_sft")"""),
    code("""run_method("dpo")"""),
    code("""run_method("kto")"""),
    code("""run_method("grpo")"""),
    code("""run_method("rloo")"""),
    code("""table = pd.DataFrame(rows).set_index("method")
print(table.drop(columns=["one held-out sample after", "source"]).round(3).to_string())
print(table["source"].iloc[0])"""),
    code("""# NBVAL_IGNORE_OUTPUT
pd.set_option("display.max_colwidth", 120)
table.round(3)"""),
    code("""# NBVAL_IGNORE_OUTPUT
fig = go.Figure(go.Bar(x=table.index, y=table["gain"], text=[f"KL {k:.2f}<br>{s:.0f} s" for k, s in
                                                          zip(table["KL (nats)"], table["seconds"])],
                       textposition="outside", marker_color="#2b6cb0"))
fig.update_layout(title="held-out sentiment gain over π0 (bar), KL and seconds (label)", yaxis_title="gain (VADER)",
                  height=380, template="plotly_white")
fig"""),
    code("""# NBVAL_CHECK_OUTPUT
# pinned by nbval: a change in any method's effect flips a line and fails the notebook test
for method, gain in table["gain"].items():
    print(f"{method:14s} raises the held-out reward: {gain > 0}; by at least 0.15: {gain >= 0.15}")
print("the same held-out samples of π0 for every method:", table["held-out reward before"].nunique() == 1)"""),
    md("""**Reading the table.** Measured while building this notebook (the table above is the same run). On these 16 held-out prompts best-of-8 gains +0.53 at a KL of at most 1.2 nats: the cheapest and, per nat, the best. DPO (+0.25, 5.5 nats) and rejection SFT (+0.21, 11 nats) move clearly. GRPO gains most (+0.73) but at 37 nats: VADER saturates near +1 and the samples drift towards gushing, reward-hacked text, so read its KL and samples, not only its gain. KTO (+0.14) is just under the +0.15 we aimed for. RLOO (−0.01) shows no gain here, although the same settings gave +0.34 on 16 other prompts: ten steps of four inputs are a noisy, high-variance estimate (its KL, 9 nats, says it moved, but not reliably towards the reward). More steps at a lower learning rate, more samples per group, or a GPU budget are what would make KTO and RLOO reliable. The seconds were measured with other notebooks sharing the 2 CPU cores, so read them as upper bounds."""),
    md("""`res.policy` is π0 plus the new adapter: `res.policy.generate(...)`, `res.policy.logprobs(...)`,
`res.save("dpo_run")` and, later, `tnb.load("dpo_run", base=pi0)` (any saved result opens by its kind). Other methods take the same call: `method="kto"`,
`"grpo"`, `"rloo"`, `"rejection_sft"`, `"best_of_n"`; DPO variants with `loss_type="ipo" | "hinge" | "robust"`.

## What can go wrong

* **Reward hacking.** The policy optimises the reward you wrote, not the one you meant. Reward *length in
  words* and watch what the text turns into: the reward climbs while the text gets worse (more filler,
  fewer distinct bigrams, shorter "words").
* **Too small β / too many steps**: the KL grows, fluency drops; Eq. 1's leash is β. `beta_sweep` draws
  the reward–KL curve.
* **Noisy, tiny evaluations**: a few held-out inputs × 2 samples is a noisy mean. Report the KL with the
  reward and look at the samples.
* **The reward model's blind spots**: VADER is a word list; "great great great" scores high."""),
    code("""res_len, table = length_hacking(pi0, train_xs[:6], eval_inputs=heldout[:3], steps=HACK_STEPS, beta=BETA,
                                learning_rate=3e-3, max_new_tokens=24, eval_samples=1, eval_train=0, seed=SEED)
print(table.round(2))
print("length reward", round(res_len.metrics["reward_heldout_before"], 1), "->",
      round(res_len.metrics["reward_heldout_after"], 1), "words; KL", round(res_len.metrics["kl_heldout_after"], 2))"""),
    code("""# NBVAL_IGNORE_OUTPUT
for x, a, b in res_len.samples[["x", "before", "after"]].head(3).itertuples(index=False):
    print(f"x: {x}\\n  before: {a}\\n  after:  {b}\\n")"""),
    md("""**Reading the hack honestly.** Five steps on six inputs are enough for the KL to jump (tens of nats) while
the word count barely moves: the policy has left π0 — look at the samples above (lost capitals, loose
grammar, shorter words) — long before the reward shows a gain. In a longer run while building this notebook
(8 steps, lr 3e-3, 32 new tokens, 9 training inputs) the held-out length reward rose from 24.7 to 27.2 words
at a KL of 96 nats, and the answers became word salad ("I visited Mogadish ArticleGoogle Ella areas where I
delved…"). The reward went up; what we wanted went down. That is reward hacking: the KL (and a look at
the text) is the alarm, β is the brake."""),
    md("""## Exercise

1. Run `tnb.reward_to_update(pi0, reward, inputs, method="grpo", beta=0.05, steps=10)` and compare its
   held-out reward and KL with DPO's. Which one moves further per step, and why (on-policy samples)?
2. `from triangle_nb.arrows.reward_to_update import beta_sweep`; run `beta_sweep(pi0, reward, inputs,
   betas=[0.03, 0.3], steps=8)` and plot it with `tnb.plots.reward_kl_curve`. Does a smaller β buy reward
   with KL, as Eq. 1 says?
3. Write your own reward as a plain function, `def polite(x, y): return float("please" in y.lower())`,
   and optimise it with `method="rejection_sft"`. What happens when most samples score 0?"""),
]
nb = nbf.v4.new_notebook(cells=cells, metadata={"kernelspec": {"name": "python3", "display_name": "Python 3",
                                                                "language": "python"}})
Path(__file__).resolve().parents[1].joinpath("01_reward_to_update.ipynb").write_text(nbf.writes(nb))
