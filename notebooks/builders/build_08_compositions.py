"""Build notebooks/08_compositions.ipynb (run, then execute it with nbconvert)."""

from pathlib import Path

import nbformat as nbf

md, code = nbf.v4.new_markdown_cell, nbf.v4.new_code_cell
cells = [
    md("""# 8 · Compositions: paths around the triangle

The triangle has three vertices — a **prompt** z, a **reward** r(x, y), a **parameter update** π* — and an arrow
between every pair. Arrows compose: you can reach the same vertex by different paths, and the path changes what
you get. This notebook walks three compositions on the real SmolLM2-135M-Instruct, with tiny settings:

1. **prompt → update** directly (context distillation) versus **prompt → reward → update** (a contrastive reward
   from two prompts, then DPO);
2. **prompt → update → prompt**: distil a prompt into weights, then search for a text prompt that gets it back;
3. **update → reward → update**: iterative self-improvement, where each round's reward is the log-ratio of the
   last two policies.

The equations that the paths chain together:

* prompt → update (Eq. 8/9): train a LoRA adapter so that π*(y|x) ≈ π0(y|x, z), minimising
  KL[π0(·|x,z) ‖ π*(·|x)] token by token on samples of the prompted teacher.
* prompt → reward (Eq. 15): R(x, y) = log π0(y|x, z+) − log π0(y|x, z−) — how much likelier the "positive" prompt
  makes y than the "negative" one.
* reward → update (Eq. 1/2): max_π E[r] − β KL[π ‖ π0], optimum π* ∝ π0 · exp(r/β); DPO fits it from preference pairs.
* update → reward (Eq. 4): r(x, y) = β (log π*(y|x) − log π0(y|x)) — an updated policy *is* a reward.
* update → prompt (Eq. 11/12): find z minimising KL[π0(·|x,z) ‖ π*(·|x)].

Everything runs on one backbone: each trained policy is a LoRA adapter, π0 is the same weights with the adapter off.
"""),
    code("""# parameters: tiny defaults (about two minutes on an idle 2-core CPU); raise them for clearer effects
N_TRAIN = 8          # training inputs (4 more are held out)
DISTIL_STEPS = 6     # prompt -> update optimiser steps
DPO_STEPS = 6        # reward -> update (DPO) optimiser steps
RLCD_STEPS = 6       # prompt -> pairs -> update (DPO on contrastive pairs) optimiser steps
N = 4                # samples per input from which DPO's best/worst pair is taken
MAX_NEW_TOKENS = 16
SEARCH_PROPOSALS = 2 # prompt candidates proposed in the round-trip search
LIVE = False        # True reruns every training and search run live (minutes); False shows the shipped bakes
SELF_STEPS = 2       # DPO steps per self-improvement round
SEED = 0""", metadata={"tags": ["parameters"]}),
    code("""import time
import numpy as np
import pandas as pd
import triangle_nb as tnb
tnb.set_live(LIVE)  # a baked result says so: "baked <date> · <s> s on 1 CPU thread · LIVE=True reruns it"
from triangle_nb.arrows.reward_to_update import EXAMPLE_INPUTS
from triangle_nb.compositions import self_improve

t_start = time.perf_counter()
pi0 = tnb.load_policy()
inputs = list(EXAMPLE_INPUTS)
train_xs, heldout = inputs[:N_TRAIN], inputs[-4:]        # disjoint: heldout is never trained on
z_pos = tnb.Prompt(system="You are a cheerful, enthusiastic assistant. Everything is wonderful and you love it.")
z_neg = tnb.Prompt(system="You are a gloomy, pessimistic assistant. Everything is dull and you complain.")
sentiment = tnb.rewards.Sentiment()                       # the judge of both paths, used by neither for training
contrastive = tnb.prompt_to_reward(pi0, z_pos, z_neg)     # Eq. 15

def held_out_scores(policy, seed=SEED):
    \"\"\"Mean VADER sentiment and mean contrastive reward of 2 samples per held-out input.\"\"\"
    xs = [x for x in heldout for _ in range(2)]
    ys = policy.generate(xs, max_new_tokens=MAX_NEW_TOKENS, temperature=1.0, seed=seed)
    return float(np.mean(sentiment(xs, ys))), float(np.mean(contrastive(xs, ys)))

print(len(train_xs), "train inputs;", len(heldout), "held-out inputs:", heldout)"""),
    md("""## 1 · Two roads from a prompt to an update

**Direct road** (prompt → update): context-distil z+ into an adapter. The student learns to behave as if z+ were
always in its context, on the training inputs only.

**Indirect road** (prompt → reward → update): turn the *pair* (z+, z−) into the contrastive reward of Eq. 15, draw
N responses per training input from π0, pair the one the reward likes best with the one it likes least, and run
DPO (β = 0.1).

**RLCD road** (prompt → pairs → update): RLCD skips the reward model's scores: for each training input,
`contrastive_pairs` samples y+ *with* z+ in the context and y− *with* z−, and DPO trains on these pairs directly —
`reward_to_update(pi0, preferences=pairs)` takes any preference dataset in TRL's prompt/chosen/rejected format.

All three roads start from the same prompts and end at a LoRA adapter with no prompt in its context. We compare
them on one yard-stick none was trained on — the mean VADER sentiment of held-out responses — and, for completeness, on the
contrastive reward itself."""),
    code("""# NBVAL_IGNORE_OUTPUT
pairs = tnb.contrastive_pairs(pi0, z_pos, z_neg, train_xs, max_new_tokens=MAX_NEW_TOKENS, seed=SEED)  # RLCD's data
print(pairs)
print("x :", pairs[0]["prompt"])
print("y+:", pairs[0]["chosen"])
print("y-:", pairs[0]["rejected"])"""),
    code("""# the direct road: prompt -> update (Eq. 9, KL objective)
direct = tnb.prompt_to_update(pi0, z_pos, train_xs, eval_inputs=heldout, method="kl", steps=DISTIL_STEPS,
                              max_new_tokens=MAX_NEW_TOKENS, seed=SEED)
# the indirect road: prompt -> reward (Eq. 15) -> update (DPO, Eq. 1/2)
dpo = tnb.reward_to_update(pi0, contrastive, train_xs, eval_inputs=heldout, method="dpo", beta=0.1,
                           steps=DPO_STEPS, samples=N, batch_size=4, learning_rate=1e-3, max_new_tokens=MAX_NEW_TOKENS,
                           eval_samples=1, eval_train=2, seed=SEED)
print(direct.info.get("provenance", "live run"))
print("direct: held-out KL[teacher || student]", round(direct.metrics["kl_heldout_before"], 3), "->",
      round(direct.metrics["kl_heldout_after"], 3))
print("DPO: pairs", dpo.metrics["n_pairs"], " loss at step 1", round(float(dpo.history["loss"].iloc[0]), 3))
# the RLCD road: prompt -> pairs -> update (DPO on the contrastive pairs, no reward scores)
rlcd = tnb.reward_to_update(pi0, preferences=pairs, eval_inputs=heldout, method="dpo", beta=0.1, steps=RLCD_STEPS,
                            batch_size=4, learning_rate=1e-3, max_new_tokens=MAX_NEW_TOKENS, seed=SEED)
print("RLCD: pairs", rlcd.metrics["n_pairs"], " loss", round(float(rlcd.history["loss"].iloc[0]), 3), "->",
      round(float(rlcd.history["loss"].iloc[-1]), 3), " held-out KL", round(rlcd.metrics["kl_heldout_after"], 2))"""),
    code("""# the yard-stick: held-out sentiment and contrastive reward, same sampling seed for every policy
scores = {name: held_out_scores(pol) for name, pol in [("π0", pi0), ("π0 + z+ (teacher)", pi0.with_prompt(z_pos))]}
print("the two ends:", {name: tuple(round(v, 3) for v in s) for name, s in scores.items()})"""),
    code("""# ... and the three roads: each an adapter, with no prompt in its context
scores |= {name: held_out_scores(pol) for name, pol in [
    ("prompt → update", direct.policy), ("prompt → reward → update", dpo.policy),
    ("prompt → pairs → update (RLCD)", rlcd.policy)]}
table = pd.DataFrame(scores, index=["sentiment", "contrastive reward"]).T.round(3)
table"""),
    code("""# NBVAL_CHECK_OUTPUT
s = table["sentiment"]
checks = {
    "distillation closed part of the held-out KL": direct.metrics["kl_heldout_after"] < direct.metrics["kl_heldout_before"],
    "DPO starts at ln 2 (pi = pi0)": abs(float(dpo.history["loss"].iloc[0]) - np.log(2)) < 1e-3,
    "the teacher pi0+z+ is more positive than pi0": s["π0 + z+ (teacher)"] > s["π0"],
    "the contrastive reward prefers the teacher": table.loc["π0 + z+ (teacher)", "contrastive reward"]
                                                  > table.loc["π0", "contrastive reward"],
    "RLCD raised the held-out sentiment over pi0": s["prompt → pairs → update (RLCD)"] > s["π0"],
}
for k, v in checks.items():
    print(f"{k}: {v}")
assert all(checks.values())"""),
    code("""# NBVAL_IGNORE_OUTPUT
import plotly.express as px
px.bar(table.reset_index(names="policy"), x="policy", y="sentiment",
       title="Held-out mean sentiment (VADER) of each road's policy, 8 samples")"""),
    md("""Read the table honestly: with these tiny settings (a handful of steps, 8 held-out samples) the numbers are noisy;
the prompted teacher π0 + z+ is the target of the direct road. In the saved run the held-out sentiment went from 0.15
(π0) to 0.31 (direct), 0.61 (contrastive reward → DPO) and 0.59 (RLCD pairs → DPO), the teacher itself 0.56. The
direct road imitates the teacher's whole distribution (tone *and* content of z+) and moves slowly at 6 KL steps; the
two DPO roads only learn the *direction* z+ vs z− singles out, so they move faster along it — RLCD's pairs differ most
(y+ and y− come from the two prompted policies, not from π0's own samples), its contrastive reward (7.0) overshoots
the teacher's (4.7), and it paid for that with a held-out KL of about 4 nats to π0 in 6 steps. Raise
`DISTIL_STEPS`, `DPO_STEPS`, `RLCD_STEPS` and `N` to see the roads separate."""),
    md("""## 2 · Round trip: prompt → update → prompt

The direct road's adapter has z+ in its weights. The reverse arrow (Eq. 11) searches for a text prompt z with
π0(·|x, z) ≈ π*(·|x): π0 proposes candidate system prompts from π*'s samples, and each is scored by the Eq. 12 KL on
the search inputs. On held-out inputs we report the KL with no prompt, with the recovered prompt and with the true
z+, and the share of the no-prompt KL the recovered prompt closes."""),
    code("""trip = tnb.update_to_prompt(direct.policy, pi0, train_xs, eval_inputs=heldout, method="search", true_prompt=z_pos,
                            candidates=["You are a friendly assistant."], rounds=1, proposals=SEARCH_PROPOSALS,
                            edits=0, max_new_tokens=MAX_NEW_TOKENS, seed=SEED)
m = trip.metrics
print(trip.info.get("provenance", "live run"))
print("true prompt     :", z_pos)
print("recovered prompt:", trip.prompt)
print(f"held-out KL: no prompt {m['kl_heldout_before']:.3f} | recovered {m['kl_heldout_after']:.3f} | true {m['kl_heldout_true_prompt']:.3f}")
print(f"share of the no-prompt KL closed: {100 * m['kl_heldout_closed']:.0f}%")"""),
    code("""# NBVAL_CHECK_OUTPUT
kls = [m["kl_heldout_before"], m["kl_heldout_after"], m["kl_heldout_true_prompt"]]
print("three finite, non-negative held-out KLs:", all(np.isfinite(k) and k >= -1e-6 for k in kls))
print("the result's prompt is the best candidate it scored:", trip.info["found_prompt"] == str(trip.prompt))
assert all(np.isfinite(k) and k >= -1e-6 for k in kls) and trip.info["found_prompt"] == str(trip.prompt)"""),
    md("""**Honest note.** With the default 6 distillation steps the adapter is only slightly off π0, so the no-prompt KL
is already small and the true prompt can *overshoot* it (π0 + z+ is more cheerful than the lightly trained π*): then
there is little for the round trip to recover and the share closed is noise. This is why the check above only tests
the mechanics, not the effect. With `DISTIL_STEPS = 12` or more the true prompt explains π* better than no prompt,
and the recovered prompt closes part of that gap — notebook 04 shows the effect at those settings."""),
    md("""## 3 · Iterative self-improvement with log-ratio rewards

Round 1 trains π1 from π0 on an external reward (sentiment here). Round i ≥ 2 needs no external reward at all: the
update of the previous round *is* a reward (Eq. 4), r_i(x, y) = β (log π_{i−1}(y|x) − log π_{i−2}(y|x)), and DPO
trains π_i from π_{i−1} on it. The idea is to extrapolate the direction the last update moved in. After every
round we measure the external sentiment and the KL to π0 on held-out inputs. Two rounds of two DPO steps each are
only a demonstration of the mechanics — they are far too short for a reliable gain."""),
    code("""rounds = self_improve(pi0, train_xs, rounds=2, reward=sentiment, ratio_beta=1.0, method="dpo", steps=SELF_STEPS,
                      samples=2, batch_size=4, max_new_tokens=MAX_NEW_TOKENS, eval_inputs=heldout, eval_samples=1,
                      eval_train=2, seed=SEED)
summary = pd.DataFrame([{"round": r.info["round"], "adapter": r.info["adapter"],
                         "external_sentiment": r.metrics["external_reward_heldout_after"],
                         "kl_to_pi0": r.metrics["kl_to_pi0_heldout_after"],
                         "loss_step_1": float(r.history["loss"].iloc[0])} for r in rounds]).round(3)
summary"""),
    md("""In the saved run the held-out sentiment went 0.145 (π0) → 0.197 (π1) → 0.288 (π2), while the Monte-Carlo KL to
π0 jumped from about 3 to about 10 nats in round 2: the log-ratio reward (β = 1) is unbounded and DPO at β = 0.1
follows it far from π0 in two steps. With one sample per held-out input both numbers are noisy; treat them as an
illustration of the drift described below, not as a measured gain."""),
    code("""# NBVAL_CHECK_OUTPUT
print("two rounds ran:", len(rounds) == 2)
print("round 2 starts from pi1 (DPO loss = ln 2 at step 1):",
      bool(abs(summary["loss_step_1"].iloc[1] - np.log(2)) < 1e-3))
assert len(rounds) == 2 and abs(summary["loss_step_1"].iloc[1] - np.log(2)) < 1e-3"""),
    code("""# NBVAL_IGNORE_OUTPUT
print(f"notebook ran in {time.perf_counter() - t_start:.0f} s")"""),
    md("""## What can go wrong

* **Different roads, different targets.** Distillation copies the teacher π0(·|x, z+) — including its mistakes and
  its length. The contrastive reward scores the *difference* between z+ and z−: if z− is badly chosen (e.g. it
  changes length or topic), DPO learns that instead of the tone you wanted. Check the contrastive reward's
  correlation with length before trusting it.
* **Reward hacking on the indirect road.** A log-ratio reward is unbounded; at small β DPO happily drives it up
  with repetitive text. Watch the KL to π0 and read samples.
* **Round trips are lossy.** A few hundred tokens of LoRA cannot always be written back as a short text prompt,
  and the search only tries what π0 can propose. A recovered prompt that closes part of the KL may read nothing
  like the original; the true prompt is a reference, not a guarantee.
* **Self-improvement drifts.** Each round extrapolates the last move; noise in round 1 is amplified in round 2, and
  the external reward may fall while the log-ratio reward rises. Keep a held-out external check (as here) and stop
  when it stalls; the KL to π0 only grows.
* **Tiny settings.** With the defaults above every number rests on 8 held-out samples; differences of a few
  hundredths are noise. Seeds are fixed so the notebook is reproducible, not so that the effects are significant.

## Exercise

1. Swap the roles: make z− the empty prompt (`tnb.Prompt()`) and rerun section 1. Does the contrastive reward now
   reward "cheerful" or just "having a system prompt at all"? Compare the sentiment of the two roads again.
2. Increase `DPO_STEPS` to 20 and `N` to 8. Does the indirect road overtake the teacher's sentiment? At what KL?
3. Run section 3 with `rounds=3`. Plot external sentiment and KL to π0 per round: is round 3 still improving?
"""),
]
nb = nbf.v4.new_notebook(cells=cells, metadata={"kernelspec": {"name": "python3", "display_name": "Python 3",
                                                               "language": "python"}})
out = Path(__file__).resolve().parents[1] / "08_compositions.ipynb"
nbf.write(nb, out)
print("wrote", out)
