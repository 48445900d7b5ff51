from pathlib import Path

import nbformat as nbf
nb = nbf.v4.new_notebook()
md, code = nbf.v4.new_markdown_cell, nbf.v4.new_code_cell
cells = [
md("""# The triangle of LLM adaptation — a tour

There are three ways to make a language model behave differently:

| vertex | what changes | example |
|---|---|---|
| **parameter update** π0 → π* | the weights | a LoRA adapter after fine-tuning |
| **reward model** r(x, y) | nothing in the model: a score for an output | a sentiment scorer, a judge prompt, a log-ratio of two models |
| **in-context prompt** z | the input | a system prompt, a few examples, some facts |

The survey this toolkit follows (*On the Transformations across Reward Model, Parameter Update, and In-Context Prompt*)
shows that each vertex can be **turned into the other two** — six arrows:

| arrow | the idea | function | notebook |
|---|---|---|---|
| 1 reward ⇒ update | optimise the reward with a KL leash (RLHF, DPO, best-of-N) | `tnb.reward_to_update` | `01_reward_to_update` |
| 2 update ⇒ reward | the log-ratio log π*/π0 *is* a reward; steer decoding with it (Eq. 7) | `tnb.update_to_reward`, `tnb.steer`, `tnb.presets` | `02_update_to_reward`, `07_table1_gallery` |
| 3 prompt ⇒ update | context distillation: bake z into the weights | `tnb.prompt_to_update` | `03_prompt_to_update` |
| 4 update ⇒ prompt | find a prompt that imitates a fine-tune | `tnb.update_to_prompt` | `04_update_to_prompt` |
| 5 prompt ⇒ reward | a judge prompt, or two contrasting prompts, give a reward | `tnb.prompt_to_reward` | `05_prompt_to_reward` |
| 6 reward ⇒ prompt | search for the prompt that maximises a reward | `tnb.reward_to_prompt` | `06_reward_to_prompt` |

Everything below runs on a real model: **SmolLM2-135M-Instruct**, shipped inside a Python package so it works offline
on a laptop CPU. Click an arrow in the navigator to read what it does.
"""),
code("""# parameters
MAX_NEW_TOKENS = 32   # raise for longer answers
N = 4                 # best-of-N samples per input
SEED = 0"""),
code("""import numpy as np
import triangle_nb as tnb
from triangle_nb.chat import whole_sentences  # prints an answer up to its last whole sentence

pi0 = tnb.load_policy()          # the embedded default model (the first call converts it once, then ~1 s)
print(pi0)"""),
code("""# NBVAL_IGNORE_OUTPUT
tnb.panels.Triangle()            # the navigator: click an arrow"""),
md("""## Vertex 1: the policy π0

`generate` is batched, KV-cached and greedy by default (temperature 0), so these outputs are reproducible.
Answers are printed up to their last whole sentence, with … where the 32-token limit cut one off; every score below
uses the whole answer."""),
code("""questions = ["Tell me about rain.", "What do you think of Mondays?", "Describe your morning.", "How was the traffic today?",
             "Tell me about your street.", "What is a typical Tuesday like?", "Describe the bus ride to work.",
             "What do you think of laundry?"]
base = pi0.generate(questions, max_new_tokens=MAX_NEW_TOKENS)
for x, y in zip(questions, base):
    print(f"> {x}\\n  {whole_sentences(y)}")"""),
md("""## Vertex 2: an in-context prompt z

`with_prompt(z)` gives π0(·|x, z): the same weights with z in the system turn — nothing is copied.
We write two opposite prompts, a cheerful z+ and a gloomy z−. A 135M model follows *what words to use* much better
than *who to be*: "You are an extremely cheerful assistant…" moved the mean sentiment of these eight answers only
from +0.46 to +0.56 when we tried it, while naming the words below moves it to about +0.8. Try both."""),
code("""z_pos = tnb.Prompt(system="Always answer with joy, using happy words like wonderful, love, great and amazing.")
z_neg = tnb.Prompt(system="You are a gloomy, pessimistic assistant. Everything disappoints you and you always complain.")
cheerful = pi0.with_prompt(z_pos).generate(questions, max_new_tokens=MAX_NEW_TOKENS)
gloomy = pi0.with_prompt(z_neg).generate(questions, max_new_tokens=MAX_NEW_TOKENS)
print("z+ :", whole_sentences(cheerful[0]))
print("z− :", whole_sentences(gloomy[0]))"""),
md("""## Vertex 3: a reward r(x, y)

A reward is anything callable as `reward(xs, ys) -> array`. `Sentiment` is VADER's compound score in [−1, 1].
The numbers say how far each prompt moves the model (greedy answers, so they are reproducible)."""),
code("""sentiment = tnb.rewards.Sentiment()
means = {name: sentiment(questions, ys).mean() for name, ys in [("no prompt", base), ("z+ cheerful", cheerful),
                                                                 ("z− gloomy", gloomy)]}
for name, v in means.items():
    print(f"{name:12s} mean sentiment {v:+.2f}")"""),
code("""# NBVAL_CHECK_OUTPUT
print("z+ raises the mean sentiment and z− lowers it:", bool(means["z+ cheerful"] > means["no prompt"] > means["z− gloomy"]))"""),
md("""## Arrow 5, prompt ⇒ reward: two prompts make a reward (Eq. 15)

R(x, y) = log π0(y | x, z+) − log π0(y | x, z−): how much more likely the answer is under the cheerful prompt.
No labels, no training — just two prompts and token-exact log-probabilities."""),
code("""R = tnb.prompt_to_reward(pi0, z_pos, z_neg, method="contrastive")
xs = ["Tell me about rain."] * 2
answers = ["Rain is wonderful! It makes everything fresh and green.", "Rain is miserable, cold and depressing."]
scores = R(xs, answers)
for y, s in zip(answers, scores):
    print(f"R = {s:+.1f}   {y}")"""),
code("""# NBVAL_CHECK_OUTPUT
print("the contrastive reward prefers the cheerful answer:", bool(scores[0] > scores[1]))"""),
md("""## Arrow 2, update ⇒ reward ⇒ steering (Eq. 7)

A log-ratio of two policies is a reward, and adding it to the log-probs of a third policy at every token steers
decoding: log π2 ∝ log π1 + (1/β)(log π* − log π0). Here π* = π0 with z+, π0 = π0 with z−, π1 = π0 (all three share
one set of weights and run as one batched forward per token). Smaller β steers harder."""),
code("""steered = tnb.steer(base=pi0, expert=pi0.with_prompt(z_pos), anti=pi0.with_prompt(z_neg), beta=1.0)
ys_steered = steered.generate(questions, max_new_tokens=MAX_NEW_TOKENS)
# the same reward the other way round: steer towards gloom
ys_gloom = tnb.steer(base=pi0, expert=pi0.with_prompt(z_neg), anti=pi0.with_prompt(z_pos), beta=1.0).generate(
    questions, max_new_tokens=MAX_NEW_TOKENS)
print("steered to cheer:", whole_sentences(ys_steered[0]))
print("steered to gloom:", whole_sentences(ys_gloom[0]))
m_base, m_up, m_down = (sentiment(questions, ys).mean() for ys in (base, ys_steered, ys_gloom))
print(f"mean sentiment: steered to gloom {m_down:+.2f} | base {m_base:+.2f} | steered to cheer {m_up:+.2f}")"""),
code("""# NBVAL_CHECK_OUTPUT
print("steering moves the mean sentiment both ways, by more than 0.2 each:", bool(m_up - m_base > 0.2 and m_base - m_down > 0.2))"""),
code("""# the five ways of answering side by side: a prompt moves the model, steering with both prompts moves it further
ways = {"steered to gloom": ys_gloom, "z− gloomy prompt": gloomy, "no prompt (π0)": base,
        "z+ cheerful prompt": cheerful, "steered to cheer": ys_steered}
tnb.plots.score_bars(list(ways), [float(sentiment(questions, ys).mean()) for ys in ways.values()],
                     title="mean VADER sentiment of the eight answers (greedy, 32 tokens each)")"""),
md("""Unlike the prompt alone, steering uses z+ and z− *together*: the log-ratio of the two is a reward, and every
token is re-weighted by it. Try β = 0.5: it pushes harder, and the text starts to break (one answer became "Ladav:)" when we tried) — the same
fluency-for-reward trade that β controls in every arrow."""),
md("""## Arrow 1, reward ⇒ update, at inference time: best-of-N (Eq. 2)

The optimum of Eq. 1 reweights π0 by exp(r/β). Sampling N answers and keeping the best is the cheapest
approximation — no training; its KL to π0 is at most log N − (N−1)/N. Notebook 01 trains real LoRA updates (DPO, GRPO…)."""),
code("""from triangle_nb.sampling import BestOfN

bon = BestOfN(pi0, sentiment, samples=N)
groups, rewards = bon.sample(questions, max_new_tokens=MAX_NEW_TOKENS, seed=SEED)   # N samples per question
print(np.round(rewards, 2))
print(f"π0 (mean of all {N} samples per question)   mean sentiment {rewards.mean():+.2f}")
print(f"best-of-{N} (the top sample per question)  mean sentiment {rewards.max(1).mean():+.2f}")
print(f"KL(best-of-{N} ‖ π0) ≤ log N − (N−1)/N = {bon.kl_bound:.2f} nats")"""),
md("""The gain is measured on the same samples here (the best of N is never below their mean); notebook 01 measures
best-of-N and trained updates on fresh samples for held-out inputs, where the gain is smaller and noisier."""),
md("""## Where next

* Each arrow has its own notebook and panel (`tnb.panels.RewardToUpdatePanel()`, … or `%load_ext triangle_nb` then `%triangle`).
* `07_table1_gallery` runs every method of the survey's Table 1 as a preset of the same Eq. 7 engine.
* `08_compositions` walks paths around the triangle: prompt → reward → update vs prompt → update directly, and round trips.

**Exercise.** Change z− to a *neutral* prompt ("You are an assistant.") and re-run the steering cell: how much of the
effect came from pushing away from gloom, and how much from pulling towards cheer?
"""),
]
nb.cells = cells
nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
cells[1].metadata["tags"] = ["parameters"]
nbf.write(nb, str(Path(__file__).resolve().parents[1] / "00_tour.ipynb"))
