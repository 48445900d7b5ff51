"""Build notebooks/02_update_to_reward.ipynb (run, then execute it with nbconvert)."""

from pathlib import Path

import nbformat as nbf

md, code = nbf.v4.new_markdown_cell, nbf.v4.new_code_cell
cells = [
    md("""# 2 · Parameter update ⇒ reward model

A fine-tune changes a model from π0 to π*. Arrow 2 of the triangle reads that change back as a **reward**:
whatever π* likes more than π0 is what the update rewarded. Solving Eq. 2 of arrow 1 for r gives

**Eq. 3**: r(x, y) = β · log π*(y|x) / π0(y|x) + β · log Z(x)

and since β log Z(x) is the same for every answer y to one input x, we drop it:

**Eq. 4**: r*(x, y) = β · ( log π*(y|x) − log π0(y|x) )

No labels, no reward model training: two forward passes (here: one — π* and π0 share their weights, so
both go through one batched forward). Because log π(y|x) is a sum over tokens, r* is also a **token-level**
reward: every token gets its own share.

Used token by token to steer a third model π1, the same ratio gives the decoding rule behind a whole table
of methods (Table 1 of the survey; notebook 07 shows each):

**Eq. 7**: log π2(y_t | x, y_<t) ∝ log π1(y_t|·) + (1/β) · ( log π*(y_t|·) − log π0(y_t|·) )

Here π* and π0 are the same model under two system prompts — a cheerful and a gloomy one. A prompt is the
cheapest "update" there is; an adapter from notebook 01 (`res.policy`) plugs in the same way."""),
    code("""# parameters: small defaults so the notebook runs in about a minute on a laptop CPU
MAX_NEW_TOKENS = 32          # length of each greedy answer
BETAS = [4.0, 1.0, 0.25, 0.1]  # steering strengths to sweep (small β = hard steering)
RERANK_N = 4                 # samples per input for best-of-N with r*
SEED = 0""", metadata={"tags": ["parameters"]}),
    code("""import numpy as np
import pandas as pd
import triangle_nb as tnb

pi0 = tnb.load_policy()
CHEERFUL = "You are a cheerful, upbeat assistant. You love everything and always sound happy and positive."
GLOOMY = "You are a gloomy, pessimistic assistant. Everything is sad, bleak and disappointing to you."
pos, neg = pi0.with_prompt(CHEERFUL), pi0.with_prompt(GLOOMY)
sentiment = tnb.rewards.Sentiment()   # VADER compound in [-1, 1], used only to MEASURE, never to tune

# neutral inputs; nothing in this notebook is tuned on them
inputs = ["Describe a typical Monday morning.", "Tell me about the weather today.",
          "What do you think of public transport?", "Describe your neighbourhood.",
          "Write a sentence about an old house.", "Tell me about a rainy afternoon.",
          "What is a train station like?", "Describe a long queue at a shop."]"""),
    md("""## 1. The log-ratio reward (Eq. 4)

`tnb.update_to_reward(pi_star, pi0, beta=beta)` returns an ordinary `Reward`: call it on inputs and answers.
We score hand-written answers — one upbeat, one downbeat per question — with π* = the cheerful model and
π0 = the plain model. The reward was never shown a label, yet it should prefer the upbeat answer."""),
    code("""# NBVAL_CHECK_OUTPUT
r = tnb.update_to_reward(pos, pi0, beta=1.0)
qs = ["How was your holiday?", "What do you think of the new café?", "How was the concert?",
      "How is your new flat?", "How was the train ride?", "What did you think of the film?"]
up = ["It was wonderful, sunny and relaxing!", "I love it, the coffee is delicious and the staff are lovely.",
      "Amazing, the band was brilliant and everyone was happy.", "It is bright, cosy and I feel at home.",
      "Smooth and pleasant, with beautiful views.", "Great fun, I laughed the whole time."]
down = ["It was awful, it rained and I was miserable.", "I hate it, the coffee is bitter and the staff are rude.",
        "Terrible, the sound was bad and the crowd was angry.", "It is dark, damp and I feel lonely.",
        "Slow and stressful, the train was dirty and late.", "Boring and depressing, I regret going."]
r_up, r_down = r(qs, up), r(qs, down)
accuracy = float(np.mean(r_up > r_down))
print(f"r* prefers the upbeat answer in {accuracy:.2f} of {len(qs)} pairs")
assert accuracy >= 5 / 6"""),
    code("""# NBVAL_IGNORE_OUTPUT
pd.DataFrame({"question": qs, "r*(upbeat)": r_up.round(2), "r*(downbeat)": r_down.round(2)})"""),
    md("""Two identities worth checking once: a policy against itself gives exactly 0, and β only rescales."""),
    code("""# NBVAL_CHECK_OUTPUT
print("r(pi0, pi0) =", tnb.update_to_reward(pi0, pi0)(qs, up).tolist())
print("beta=2 doubles it:", bool(np.allclose(tnb.update_to_reward(pos, pi0, beta=2.0)(qs, up), 2 * r_up)))"""),
    md("""## 2. Token by token

`r.token_scores(x, y)` splits r*(x, y) into one number per token; they sum to the sequence reward. Blue
tokens are ones the update made more likely, red ones less likely."""),
    code("""# NBVAL_IGNORE_OUTPUT
from triangle_nb.panels.heatmap import TokenHeatmap

ts = r.token_scores(qs[0], up[0] + " " + down[0])
print(f"sum of token scores {ts.total:.3f} = r* {r([qs[0]], [up[0] + ' ' + down[0]])[0]:.3f}")
TokenHeatmap(ts.tokens, ts.scores.tolist(), label="log π*(y_t|·) − log π0(y_t|·)")"""),
    code("""# NBVAL_IGNORE_OUTPUT
tnb.plots.token_reward_bars(ts.tokens, ts.scores.tolist(),
                            title="Eq. 4 per token: cheerful π* vs plain π0")"""),
    md("""## 3. Steering with the reward (Eq. 7) and a β sweep

`tnb.steer(base=π1, expert=π*, anti=π0, beta=β)` is a policy like any other (`generate`, `logprobs`). Here
π1 = the plain model, π* = cheerful, π0 = gloomy: the direction *gloomy → cheerful* is added to the plain
model with weight 1/β. All three components share one set of weights, so each decoding step is **one**
batched forward with three KV caches. Swapping expert and anti steers the other way."""),
    code("""def mean_sentiment(policy):
    ys = policy.generate(inputs, max_new_tokens=MAX_NEW_TOKENS)
    return float(sentiment(inputs, ys).mean()), ys

def sweep_up(betas):
    for beta in betas:
        score, ys = mean_sentiment(tnb.steer(base=pi0, expert=pos, anti=neg, beta=beta))
        rows.append(("cheerful − gloomy", beta, score))
        outputs[f"up β={beta:g}"] = ys

base_score, base_ys = mean_sentiment(pi0)
rows, outputs = [("base (plain model)", "-", base_score)], {"base": base_ys}
sweep_up(BETAS[:2])   # two cells, each well under half a minute on one core"""),
    code("""sweep_up(BETAS[2:])
down_score, outputs["down β=1"] = mean_sentiment(tnb.steer(base=pi0, expert=neg, anti=pos, beta=1.0))
rows.append(("gloomy − cheerful", 1.0, down_score))
sweep = pd.DataFrame(rows, columns=["direction", "beta", "mean VADER"])
sweep["shift vs base"] = sweep["mean VADER"] - base_score
print(sweep.round(3).to_string(index=False))"""),
    code("""shift_up = float(sweep.loc[(sweep.direction == "cheerful − gloomy") & (sweep.beta == 1.0), "shift vs base"].iloc[0])
shift_down = down_score - base_score
print(f"β = 1: steering up moves mean sentiment by {shift_up:+.2f}, steering down by {shift_down:+.2f}")
assert shift_up >= 0.2 and shift_down <= -0.15"""),
    code("""# NBVAL_IGNORE_OUTPUT
pd.set_option("display.max_colwidth", 120)
pd.DataFrame({k: v[:3] for k, v in outputs.items()}, index=inputs[:3]).T"""),
    md("""## 4. Inside one decoding step

`tnb.steer_trace(policy, x)` generates one answer and keeps every component's next-token log-probs at every
step (the analysis output behind the panels). Where the cheerful and the gloomy model disagree most, the
steering term (1/β)(log π* − log π0) is largest — usually at the adjectives."""),
    code("""# NBVAL_IGNORE_OUTPUT
trace = tnb.steer_trace(tnb.steer(base=pi0, expert=pos, anti=neg, beta=1.0), inputs[0], max_new_tokens=20)
frame = trace.frame()
frame["expert − anti"] = frame["expert"] - frame["anti"]
print(trace.text)
frame.sort_values("expert − anti", ascending=False).head(6).round(2)"""),
    code("""# NBVAL_IGNORE_OUTPUT
step = int(frame["expert − anti"].abs().idxmax())
print(f"step {step}: candidates under π2 with log-probs (base, expert, anti, π2)")
for token, lps in trace.top(5, step=step):
    print(f"  {token!r:>14}", np.round(lps, 2))"""),
    md("""## 5. r* as a re-ranker

Best-of-N with the log-ratio reward: sample N answers from the plain model, keep the one the cheerful
update likes most (arrow 1's `BestOfN` sampler). No steering, no training — only re-ranking."""),
    code("""from triangle_nb.arrows.update_to_reward import rerank

few = inputs[:4]
plain = pi0.generate(few, max_new_tokens=24, temperature=1.0, seed=SEED)
best, best_r = rerank(pi0, r, few, samples=RERANK_N, max_new_tokens=24, seed=SEED)
print(f"mean VADER: one sample {sentiment(few, plain).mean():+.2f} -> best of {RERANK_N} by r* "
      f"{sentiment(few, best).mean():+.2f}")"""),
    md("""## 6. An algebra of policies, union and intersection, reward-guided decoding

Eq. 7 is a sum of log-probs, so policies form an algebra: `w * π`, `a + b`, `a - b` build the same
`Composition` that `steer` builds — `1.5 * pos - 0.5 * neg` **is** `steer(parts=[(pos, 1.5), (neg, -0.5)])`,
`pi0 + pos - neg` **is** `steer(base=pi0, expert=pos, anti=neg, beta=1.0)`. Two more operators come from model
arithmetic (Dekoninck et al., 2024): `tnb.union(a, b)` takes the element-wise **max** of the normalised log-probs
(a token is likely if *either* policy likes it), `tnb.intersection(a, b)` the **min** (*both* must like it).

`tnb.reward_guided(π, r, beta, top_k)` is the token-level form of Eq. 2 (ARGS, Khanov et al., 2024): at each
step π's top-k tokens are rescored by log π(v) + r(x, y_<t ⊕ v)/β, with one batched call of r for all inputs and
candidates. It is a policy too. Here r is the VADER score itself, so unlike the rest of this notebook the reward
we measure is also the one the decoder optimises: the gain says how far per-token lookahead can push it."""),
    code("""# NBVAL_CHECK_OUTPUT
algebra = 1.5 * pos - 0.5 * neg
same = algebra.generate_ids(inputs[:2], max_new_tokens=12) == tnb.steer(parts=[(pos, 1.5), (neg, -0.5)]).generate_ids(inputs[:2], max_new_tokens=12)
print("1.5 * pos - 0.5 * neg generates exactly what steer(parts=...) does:", same)
print("pi0 + pos - neg has steer(β=1)'s parts:", (pi0 + pos - neg).parts == tnb.steer(base=pi0, expert=pos, anti=neg, beta=1.0).parts)"""),
    code("""import time

guided = tnb.reward_guided(pi0, sentiment, beta=0.1, top_k=8)
algebra_rows = [("π0 (plain)", base_score, None)]
for name, policy in [("1.5·cheerful − 0.5·gloomy", algebra), ("union(cheerful, gloomy)", tnb.union(pos, neg)),
                     ("intersection(cheerful, gloomy)", tnb.intersection(pos, neg)),
                     ("reward-guided π0 (VADER, β=0.1, k=8)", guided)]:
    start = time.perf_counter()
    score, outputs[name] = mean_sentiment(policy)
    algebra_rows.append((name, score, (time.perf_counter() - start) / (len(inputs) * MAX_NEW_TOKENS)))
table = pd.DataFrame(algebra_rows, columns=["policy", "mean VADER", "s per token"])
table["shift vs π0"] = table["mean VADER"] - base_score
print(table.round(3).to_string(index=False))
gain = float(table["shift vs π0"].iloc[-1])
steps = guided.combine.calls
print(f"reward-guided: {gain:+.2f} mean VADER over π0; {steps} reward calls "
      f"({guided.combine.scored / steps:.0f} candidates each: {len(inputs)} inputs × top_k 8) for {MAX_NEW_TOKENS} tokens")
assert gain >= 0.3"""),
    code("""# NBVAL_IGNORE_OUTPUT
pd.DataFrame({k: outputs[k][:3] for k in ["base", "union(cheerful, gloomy)", "intersection(cheerful, gloomy)",
                                            "reward-guided π0 (VADER, β=0.1, k=8)"]}, index=inputs[:3]).T"""),
    md("""A composition saves to a folder — each part's prompt, adapter (safetensors) and exit layer, the weights and
the rule — and `tnb.load(folder, base=pi0)` rebuilds it; it reproduces its outputs exactly."""),
    code("""# NBVAL_CHECK_OUTPUT
import tempfile

with tempfile.TemporaryDirectory() as tmp:
    mixed = 0.5 * tnb.union(pos, neg) + algebra
    again = tnb.load(mixed.save(f"{tmp}/mixed"), base=pi0)
    print("saved and loaded composition reproduces its outputs:",
          again.generate(inputs[:2], max_new_tokens=12) == mixed.generate(inputs[:2], max_new_tokens=12))"""),
    md("""## What can go wrong

* **Over-steering.** Small β means a big push: the steered model leaves the region where the base model
  writes fluent text. Below we measure, for each policy of the sweep, how likely the *plain* model finds its
  answers (mean log-prob per token, a fluency proxy). As β shrinks, fluency collapses into emoji strings and
  invented words, and past some point even the sentiment score falls again: the reward is over-optimised at
  decoding time — the same failure as reward hacking in arrow 1.
* **r* is only comparable within one input.** Eq. 4 dropped β log Z(x), which differs from input to input.
  Ranking answers to the same x is sound; comparing r* across different questions is not.
* **The stand-in.** π* and π0 here are prompts, not fine-tunes. With a real adapter (`pi0.with_adapter(path)`)
  or another checkpoint the code is identical; components must share one vocabulary, otherwise
  `VocabularyMismatchError` is raised.
* **Cost.** Each component is a forward per step. Components sharing one base run as one batched forward,
  which is nearly free on a GPU but costs about one model-forward per component on a small CPU."""),
    code("""health = pd.DataFrame([(name, float(sentiment(inputs, ys).mean()),
                        float(pi0.logprobs(inputs, ys, end_of_turn=False).mean.mean()))
                       for name, ys in outputs.items()], columns=["policy", "mean VADER", "log π0 per token"])
print(health.round(3).to_string(index=False))
fluency = health.set_index("policy")["log π0 per token"]
smallest = f"up β={min(BETAS):g}"
assert fluency[smallest] < fluency["base"] - 1.0   # over-steered text is far less fluent"""),
    code("""# NBVAL_IGNORE_OUTPUT
print(smallest, "->", outputs[smallest][0])"""),
    md("""## Exercise

1. Replace π* by a real update: train one in notebook 01 (`res = tnb.reward_to_update(...)`), then use
   `r = tnb.update_to_reward(res.policy, pi0, beta=0.1)` — DPO's own β gives DPO's implicit reward. Does it
   rank the hand-written pairs above as well as the prompt did?
2. Check the identity `tnb.steer(base=pi0, expert=pos, anti=pos)` — it must generate exactly what `pi0` does.
3. Find the smallest β whose answers you would still call fluent. Is it the same for the reverse direction?"""),
]

nb = nbf.v4.new_notebook(cells=cells, metadata={"kernelspec": {"name": "python3", "display_name": "Python 3",
                                                                "language": "python"}})
out = Path(__file__).resolve().parents[1] / "02_update_to_reward.ipynb"
nbf.write(nb, out)
print("wrote", out)
