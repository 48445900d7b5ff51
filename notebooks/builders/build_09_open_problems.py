"""Build notebooks/09_open_problems.ipynb (then bake it: python -m triangle_nb.bake notebooks/09_open_problems.ipynb)."""

from pathlib import Path

import nbformat as nbf

md, code = nbf.v4.new_markdown_cell, nbf.v4.new_code_cell
cells = [
    md("""# 9 · An open problem: token-level rewards from sequence-level preferences

The survey closes each arrow with future directions. This notebook runs one of them; notebook 10 runs another
(lifelong internalisation, §4.2), and notebook 03 a third (a hypernetwork from prompt to weights, §4.2).

**Process-level rewards from sequence-level supervision** (§3.2: *"we can deliberately train LLMs using
sequence-level supervision to attain process-level reward models"*). GenARM's **autoregressive reward model**
(Xu et al., ICLR 2025) is a language model π_r whose token log-probs are the reward,
r(x, y) = β_r · Σ_t log π_r(y_t | x, y_<t), trained on preference pairs (x, y⁺, y⁻) with the reference-free loss

**L = −log σ( β_r · (log π_r(y⁺|x) − log π_r(y⁻|x)) )**.

Because r is a sum over tokens, Eq. 2's optimum π0 · exp(r/β′) is, token by token, Eq. 7:
log π(y_t|·) ∝ log π0(y_t|·) + (1/β) · log π_r(y_t|·) — one extra row per decoding step, where reward-guided
decoding (ARGS, notebook 02) calls its reward on every candidate token.

The training run is baked (a shipped result, shown with its provenance); `LIVE = True` reruns it."""),
    code("""# parameters
LIVE = False          # True reruns every training run live (minutes); False shows the shipped bakes
TOKENS = 32           # length of each answer
BETAS = [1.0, 0.5]    # decoding strengths of the reward model: pi0 + (1/beta) * arm.policy
N_SHOWN = 4           # held-out inputs decoded here (benchmarks/open_problems.py uses all 8)
SEED = 0""", metadata={"tags": ["parameters"]}),
    code("""import time

import pandas as pd
import triangle_nb as tnb
from triangle_nb.autoregressive_reward import CHEERFUL, GLOOMY, HELDOUT_INPUTS, TRAIN_INPUTS

tnb.set_live(LIVE)  # a baked result says so: "baked <date> · <s> s on 1 CPU thread · LIVE=True reruns it"
pi0 = tnb.load_policy()
sentiment = tnb.rewards.Sentiment()   # VADER in [-1, 1]: it labels the pairs and measures, it is never decoded with
heldout = list(HELDOUT_INPUTS[:N_SHOWN])  # neutral inputs no training run ever sees"""),
    md("""## An autoregressive reward model (§3.2)

**Preference data** in TRL's format (prompt / chosen / rejected): contrastive prompting (RLCD, arrow 5:
`tnb.contrastive_pairs` does these two calls) writes a cheerful and a gloomy answer to each of 24 training inputs;
the pairs VADER agrees with are kept."""),
    code("""import datasets

sampling = dict(max_new_tokens=TOKENS, temperature=0.7, seed=SEED, batch_size=16)
xs = list(TRAIN_INPUTS)
chosen = pi0.with_prompt(CHEERFUL).generate(xs, **sampling)     # y+ ~ π0(·|x, z+)"""),
    code("""rejected = pi0.with_prompt(GLOOMY).generate(xs, **sampling)    # y− ~ π0(·|x, z−)
ds = datasets.Dataset.from_dict({"prompt": xs, "chosen": chosen, "rejected": rejected})
agree = sentiment(ds["prompt"], ds["chosen"]) > sentiment(ds["prompt"], ds["rejected"])
ds = ds.select([i for i, keep in enumerate(agree) if keep])
print(f"{len(ds)} of {len(agree)} pairs kept; e.g.\\n  chosen:   {ds['chosen'][0][:90]}\\n  rejected: {ds['rejected'][0][:90]}")"""),
    md("""**Training** π_r: a new LoRA adapter on the same base weights, through the training engine (the Trainer:
checkpoints, resume, callbacks), with the reference-free loss above. A quarter of the pairs is held out: the
sequence score β_r log π_r ranks chosen above rejected there?"""),
    code("""arm = tnb.train_reward_model(pi0, preferences=ds, method="autoregressive", steps=30, batch_size=4,
                             learning_rate=3e-3, beta_r=0.1, lora_r=4, seed=SEED)
print(arm.info.get("provenance", "live run"))
m = arm.metrics
print(f"held-out preference accuracy of r = β_r log π_r: {m['preference_accuracy_heldout_before']:.2f} (π0's own "
      f"log-probs) -> {m['preference_accuracy_heldout_after']:.2f} on {m['n_heldout']} pairs ({m['n_train']} trained)")
assert m["preference_accuracy_heldout_after"] > 0.5"""),
    code("""# NBVAL_IGNORE_OUTPUT
arm.plot()"""),
    md("""**A token-level reward.** `arm.token_scores(x, y)` gives β_r · log π_r(y_t | x, y_<t) for every token — the
heatmap view of arrow 2 — and the scores sum to the sequence reward. (Every token has a negative log-prob; what
the model learnt shows in the *differences* between answers.)"""),
    code("""# NBVAL_IGNORE_OUTPUT
from triangle_nb.panels.heatmap import TokenHeatmap

x = heldout[0]
up, down = "It is a bright, lovely and happy day.", "It is a grim, dreary and miserable day."
for y in (up, down):
    ts = arm.token_scores(x, y)
    assert abs(ts.total - float(arm([x], [y])[0])) < 1e-9   # Σ_t token scores = sequence score
    print(f"r = {ts.total:+.3f}  {y}")
ts = arm.token_scores(x, up + " " + down)
TokenHeatmap(ts.tokens, ts.scores.tolist(), label="β_r log π_r(y_t|·)")"""),
    md("""**Decoding with it (Eq. 7).** `pi0 + (1 / beta) * arm.policy` is a policy of the algebra: the base row and
the adapter row run as one batched, KV-cached forward per step. Side by side with π0 and ARGS
(`tnb.reward_guided`, VADER itself as the reward, β = 0.1, top_k = 8) on held-out neutral inputs."""),
    code("""def measure(name, policy):
    t0 = time.perf_counter()
    ids = policy.generate_ids(heldout, max_new_tokens=TOKENS)
    seconds = time.perf_counter() - t0
    ys = [policy.decode_response(t) for t in ids]
    rows.append((name, float(sentiment(heldout, ys).mean()), seconds / sum(map(len, ids))))
    answers[name] = ys

rows, answers = [], {}
measure("π0", pi0)
measure("ARGS (VADER, β=0.1, k=8)", tnb.reward_guided(pi0, sentiment, beta=0.1, top_k=8))"""),
    code("""for beta in BETAS:
    measure(f"π0 + (1/{beta:g})·π_r", pi0 + (1 / beta) * arm.policy)
table = pd.DataFrame(rows, columns=["policy", "mean VADER", "s per token"])
table["gain over π0"] = table["mean VADER"] - table["mean VADER"].iloc[0]
print(table.round(3).to_string(index=False))
assert table["gain over π0"].iloc[2:].max() > 0   # the learnt token-level reward moves sentiment up"""),
    code("""# NBVAL_IGNORE_OUTPUT
pd.set_option("display.max_colwidth", 110)
pd.DataFrame(answers, index=heldout).T"""),
    md("""**Against a Bradley–Terry reward model** (arrow 5's MiniLM head, trained on the same pairs) used in best-of-N:
it needs N samples per input, then N reward calls."""),
    code("""bt = tnb.train_reward_model(ds, seed=SEED)
t0 = time.perf_counter()
best = tnb.BestOfN(pi0, bt, 4).generate(heldout, max_new_tokens=TOKENS, temperature=0.7, seed=SEED)
print(f"best-of-4 (Bradley–Terry head, held-out pair accuracy {bt.metrics['accuracy_heldout_after']:.2f}): mean VADER "
      f"{float(sentiment(heldout, best).mean()):+.3f} in {time.perf_counter() - t0:.1f} s")"""),
    md("""**Which to pick.** The numbers on all eight held-out inputs are in BENCHMARKS.md ("Open problems"): ARGS with
VADER is strong *because VADER is the measuring stick and costs nothing*; with a model as its reward (a neural scorer,
or this ARM), ARGS pays k reward forwards per token. The ARM pays one extra row per token and needs no reward at
decoding time — it *is* the reward, learnt from sequence-level pairs."""),
    md("""## What the numbers say, and what would move them

* **ARM.** On 135M parameters the reward model learns the cheerful/gloomy direction from ~18 pairs, and
  π0 + (1/β)·π_r moves held-out sentiment without any reward call while decoding. Its cost is one extra row per
  step — about ARGS's cost *with VADER* (a lexicon is nearly free), and a fraction of ARGS's with a model reward.

## Exercise

1. Train the ARM on pairs from a reward's best and worst samples instead:
   `tnb.train_reward_model(pi0, reward=sentiment, inputs=list(TRAIN_INPUTS), method="autoregressive")`.
2. Decode with `pi0 + (1 / beta) * arm.policy` at β = 0.25: how far does sentiment move, and what happens to the
   answers' fluency?"""),
]

nb = nbf.v4.new_notebook(cells=cells, metadata={"kernelspec": {"name": "python3", "display_name": "Python 3",
                                                                "language": "python"}})
out = Path(__file__).resolve().parents[1] / "09_open_problems.ipynb"
nbf.write(nb, out)
print("wrote", out)
