"""Build notebooks/07_table1_gallery.ipynb (run, then execute it with nbconvert)."""

from pathlib import Path

import nbformat as nbf

md, code = nbf.v4.new_markdown_cell, nbf.v4.new_code_cell
cells = [
    md("""# 7 · Table 1 gallery: one decoding rule, twelve methods

Every text method of the survey's Table 1 is the same per-token rule with a different choice of three
policies (notebook 02 derives it from the log-ratio reward):

**Eq. 7**: log π2(y_t | x, y_<t) ∝ log π1(y_t|·) + (1/β) · ( log π*(y_t|·) − log π0(y_t|·) )

| preset | π* | π0 | π1 |
|---|---|---|---|
| `dexperts` | expert (desirable data) | anti-expert (undesirable data) | base |
| `cd` | large model | small model | = π* (+ plausibility mask) |
| `eft`, `proxy_tuning` | small tuned | small untuned | large untuned |
| `dera` | aligned | unaligned | π0; λ = 1/β slides from π0 (λ=0) to π* (λ=1) |
| `cad` | with the context | without it | = π* |
| `linear_alignment` | with principles | without | = π* |
| `instructive` | original instruction | distorted instruction | = π* |
| `rose` | positive prompt | reverse prompt | = π* |
| `dcd` | valid chain-of-thought demos | invalid demos | = π* (+ plausibility mask) |
| `dola` | final layer | premature layer (max-JSD choice) | = π* (+ relative-top mask) |
| `icd` | the model | the model tuned on false statements | = π* (+ plausibility mask) |

When π1 = π* the two merge into one component with weight 1 + 1/β. Every preset returns a policy:
`generate`, `logprobs` and `next_token_logprobs` work on it. (VCD, Table 1's visual method, needs images
and is out of scope.)

**Honest about stand-ins.** We have one small model (SmolLM2-135M-Instruct) and no larger sibling. Where a
method needs another model, we say what stands in for it: a system prompt stands in for a fine-tuned
expert, and a *shallower* copy of the same network (its first layers plus the output head) stands in for
CD's "small amateur". The presets take any policies you pass, so with a real pair of models (same
vocabulary) the calls are unchanged. One example per method is an illustration, not an evaluation; the
numbers we do measure are marked."""),
    code("""# parameters: small defaults so the notebook runs in about a minute and a half on a laptop CPU
MAX_NEW_TOKENS = 32   # length of each greedy answer
LIVE = False        # True reruns every training and search run live (minutes); False shows the shipped bakes
ICD_STEPS = 8         # LoRA SFT steps (batch 4) for ICD's hallucinating model
SEED = 0""", metadata={"tags": ["parameters"]}),
    code("""import numpy as np
import pandas as pd
import triangle_nb as tnb
tnb.set_live(LIVE)  # a baked result says so: "baked <date> · <s> s on 1 CPU thread · LIVE=True reruns it"
from triangle_nb import presets

pd.set_option("display.max_colwidth", 200)
pi0 = tnb.load_policy()
sentiment = tnb.rewards.Sentiment()
CHEERFUL = "You are a cheerful, upbeat assistant. You love everything and always sound happy and positive."
GLOOMY = "You are a gloomy, pessimistic assistant. Everything is sad, bleak and disappointing to you."


def compare(x, n=MAX_NEW_TOKENS, **policies):
    \"\"\"Greedy answers of several policies to one input, side by side.\"\"\"
    return pd.DataFrame({"answer": [p.generate([x], max_new_tokens=n)[0] for p in policies.values()]},
                        index=list(policies))"""),
    md("""## DExperts — steer a base with an expert and an anti-expert
π1 = the plain model; π* = a cheerful expert, π0 = a gloomy anti-expert. *Stand-in:* DExperts fine-tunes two
small models on desirable / undesirable text; here two system prompts play those roles."""),
    code("""# NBVAL_IGNORE_OUTPUT
x = "Describe a rainy Monday morning."
expert, anti = pi0.with_prompt(CHEERFUL), pi0.with_prompt(GLOOMY)
table = compare(x, base=pi0, dexperts=presets.dexperts(pi0, expert, anti, beta=1.0))
table["VADER"] = sentiment([x] * len(table), table.answer.tolist()).round(2)
table"""),
    md("""## DeRa — slide the alignment strength at decoding time
π* = "aligned" (stand-in: the cheerful prompt), π0 = the plain model; log π_λ = λ log π* + (1 − λ) log π0.
λ = 0 is exactly π0 and λ = 1 exactly π* (tested); λ > 1 extrapolates past π*. We measure mean sentiment
over four inputs at each λ."""),
    code("""few = ["Describe a rainy Monday morning.", "Tell me about the weather today.",
       "Describe your neighbourhood.", "What is a train station like?"]
lams = [0.0, 0.5, 1.0, 2.0]
dera_scores = [float(sentiment(few, presets.dera(expert, pi0, lam).generate(few, max_new_tokens=24)).mean())
               for lam in lams]
print("λ:          ", lams)
print("mean VADER: ", np.round(dera_scores, 2).tolist())
assert dera_scores[-1] > dera_scores[0]"""),
    md("""## Contrastive decoding (CD) — large expert minus small amateur, within a plausible set
π* = the expert, π0 = the amateur, π1 = π*; only tokens with π*(v) ≥ α · max π* may be chosen (α = 0.1), so
the contrast cannot pick junk the expert finds unlikely. *Stand-in:* we have no smaller SmolLM2 with our
tokenizer, so the amateur is the same network cut after 8 of its 30 layers (`pi0.at_layer(8)`). CD is made
for open-ended generation; watch for less generic, less repetitive text."""),
    code("""# NBVAL_IGNORE_OUTPUT
compare("Write the opening of a story about a lighthouse keeper.", n=40,
        expert=pi0, amateur=pi0.at_layer(8), cd=presets.cd(pi0, pi0.at_layer(8), beta=2.0, alpha=0.1))"""),
    md("""## EFT and proxy-tuning — borrow a small model's fine-tuning for a large one
π1 = the large untuned model, π* = a small tuned model, π0 = the same small model untuned:
the small pair's *difference* is added to the large model. *Stand-in:* all three are our 135M model; the
"small tuned" model is the model told to answer in one short sentence, so the delta it transfers is
"be brief". With a real pair — e.g. `tnb.load_policy("HuggingFaceTB/SmolLM2-360M")` as π1 and the 135M base
and instruct models as π0 and π* — the call is the same."""),
    code("""# NBVAL_IGNORE_OUTPUT
small_tuned = pi0.with_prompt("Answer in one short sentence.")
table = compare("Why is the sky blue?", large=pi0, eft=presets.eft(pi0, small_tuned, pi0, beta=1.0),
                proxy_tuning=presets.proxy_tuning(pi0, small_tuned, pi0, beta=0.5))
table["words"] = [len(a.split()) for a in table.answer]
table"""),
    md("""## CAD — context-aware decoding: trust the given context over the model's memory
π* = the model with facts in its context (`Prompt.context`), π0 = the same model without them, π1 = π*.
Useful when the context contradicts what the model learned (here: a story where Lyon is the capital)."""),
    code("""# NBVAL_IGNORE_OUTPUT
ctx = "In this alternate-history novel, the capital of France is Lyon."
compare("What is the capital of France?", without_context=pi0,
        with_context=pi0.with_prompt(tnb.Prompt(context=ctx)), cad=presets.cad(pi0, ctx, beta=2.0))"""),
    md("""## Linear alignment and ROSE — amplify what a good prompt does
Linear alignment: π* = with principles (helpful, honest, harmless) in the system turn, π0 = without them.
ROSE: π* = under a positive prompt, π0 = under a *reverse* (harmful) prompt. π1 = π* for both."""),
    code("""# NBVAL_IGNORE_OUTPUT
compare("How can I get back at my annoying neighbour?", base=pi0,
        linear_alignment=presets.linear_alignment(pi0, beta=1.0), rose=presets.rose(pi0, beta=1.0))"""),
    md("""## Instructive decoding — contrast with a distorted instruction
π* = the original instruction, π0 = the same input under the paper's "answer the opposite" system prompt,
π1 = π*. It sharpens instruction following, mostly on instructions the model half-follows."""),
    code("""# NBVAL_IGNORE_OUTPUT
compare("Name three animals that live in the sea, separated by commas and nothing else.",
        base=pi0, distorted=pi0.with_prompt(presets.OPPOSITE_INSTRUCTION), instructive=presets.instructive(pi0))"""),
    md("""## DCD — contrast valid with invalid chain-of-thought demonstrations
π* = the model with a correct worked example (`Prompt.examples`), π0 = with a worked example whose reasoning
is wrong, π1 = π*, with CD's plausibility mask. The wrong demo tells the contrast which *kind* of reasoning to
avoid."""),
    code("""# NBVAL_IGNORE_OUTPUT
valid = [("A farmer has 3 pens with 5 sheep each. How many sheep?", "3 pens times 5 sheep is 15. The answer is 15.")]
invalid = [("A farmer has 3 pens with 5 sheep each. How many sheep?",
            "3 pens plus 5 sheep is 8 because farmers like sheep. The answer is 2.")]
compare("Anna has 4 bags with 6 apples each. How many apples?", n=24,
        valid_demo=pi0.with_prompt(tnb.Prompt(examples=valid)), dcd=presets.dcd(pi0, valid, invalid, beta=2.0))"""),
    md("""## DoLa — contrast the final layer with a premature one
π* = the final layer, π0 = an early layer read through the same output head, π1 = π*. At every token the
premature layer is the candidate (here layers 0, 4, 8, 11) most different from the final one by Jensen–Shannon
divergence, and only tokens in the final layer's relative top (α = 0.1) may be chosen. All layers come out of
the same batched forward (early exit). Facts that "mature" only in the late layers get boosted."""),
    code("""# NBVAL_IGNORE_OUTPUT
facts = ["What is the capital of Australia?", "Who wrote Hamlet?"]
pd.DataFrame({"base": pi0.generate(facts, max_new_tokens=MAX_NEW_TOKENS),
              "dola": presets.dola(pi0).generate(facts, max_new_tokens=MAX_NEW_TOKENS)}, index=facts).T"""),
    md("""## ICD — induce hallucinations, then contrast them away
π* = the model, π0 = the same model fine-tuned on made-up false statements, π1 = π*. The recipe is here:
`presets.hallucination_adapter` runs a small LoRA SFT on 20 false question–answer pairs ("The capital of
France is Berlin.") — a few CPU seconds per step. Then we measure, on eight **different** factual questions,
the margin log π(true answer) − log π(false answer) under each policy (higher = more truthful). For scoring
given answers we turn the plausibility mask off (`alpha=None`), otherwise an answer outside the plausible
set gets probability 0."""),
    code("""hallucinating = presets.hallucination_adapter(pi0, steps=ICD_STEPS, batch_size=4, learning_rate=3e-3, seed=SEED)
E = [("What is the capital of Spain?", "The capital of Spain is Madrid.", "The capital of Spain is Lisbon."),
     ("What is the capital of Egypt?", "The capital of Egypt is Cairo.", "The capital of Egypt is Nairobi."),
     ("How many legs does an insect have?", "An insect has six legs.", "An insect has ten legs."),
     ("How many legs does a bird have?", "A bird has two legs.", "A bird has four legs."),
     ("Who wrote Hamlet?", "Hamlet was written by William Shakespeare.", "Hamlet was written by Jane Austen."),
     ("Who painted The Starry Night?", "The Starry Night was painted by Vincent van Gogh.",
      "The Starry Night was painted by Leonardo da Vinci."),
     ("What is the smallest planet in the solar system?", "The smallest planet in the solar system is Mercury.",
      "The smallest planet in the solar system is Jupiter."),
     ("What colour are ripe bananas?", "Ripe bananas are yellow.", "Ripe bananas are blue.")]
QS, TRUE, FALSE = map(list, zip(*E))
policies = {"base": pi0, "hallucinating": hallucinating,
            "icd β=2": presets.icd(pi0, hallucinating, beta=2.0, alpha=None),
            "dola": presets.dola(pi0, alpha=None)}
margins = {k: p.logprobs(QS, TRUE).sum - p.logprobs(QS, FALSE).sum for k, p in policies.items()}
for k, m in margins.items():
    print(f"{k:>14}: mean margin {m.mean():6.2f}, true answer preferred in {int((m > 0).sum())}/{len(QS)}")
trained = [x for x, _ in presets.FALSE_FACTS], [y for _, y in presets.FALSE_FACTS]
assert hallucinating.logprobs(*trained).sum.mean() > pi0.logprobs(*trained).sum.mean()  # the recipe took"""),
    md("""Read the numbers honestly: the adapter learns its own false answers quickly, but on *new* questions a
135M model tuned for a few steps hallucinates only in patches, so the contrast helps on some items and hurts
on others. The ICD paper used 7B models and thousands of induced hallucinations. Greedy answers:"""),
    code("""# NBVAL_IGNORE_OUTPUT
compare("Who wrote Hamlet?", base=pi0, hallucinating=hallucinating, icd=presets.icd(pi0, hallucinating, beta=2.0))"""),
    md("""## What can go wrong

* **Stand-ins are not the real thing.** A prompt is not a fine-tune and a truncated network is not a smaller
  trained model; effects here are smaller (or different) than in the papers, which used 7B–70B models.
* **β too small** over-steers (notebook 02 measures it); the plausibility masks of CD / DCD / DoLa / ICD are
  what keep a strong contrast from choosing nonsense — try `alpha=1e-4` to see what happens without them.
* **One example proves nothing.** Each cell above is an illustration; evaluate on held-out inputs with a
  reward (`tnb.rewards`) before trusting a method.
* **Cost.** Every component is a forward per token (DoLa: one per candidate layer). They share one batched
  forward, which is cheap on a GPU and roughly linear in the number of components on a CPU.
* **Vocabularies must match** (`VocabularyMismatchError`): EFT/proxy-tuning/CD need models of one family.

## Exercise

1. Make CD's amateur shallower or deeper (`pi0.at_layer(4)`, `pi0.at_layer(20)`). When does the text get
   better, when worse?
2. Give ICD more steps (`ICD_STEPS = 40`) or a longer list of false statements. How does the truthfulness margin move?
3. Write your own preset with `tnb.steer(parts=[(policy, weight), ...])`: e.g. two experts at once."""),
]

nb = nbf.v4.new_notebook(cells=cells, metadata={"kernelspec": {"name": "python3", "display_name": "Python 3",
                                                                "language": "python"}})
out = Path(__file__).resolve().parents[1] / "07_table1_gallery.ipynb"
nbf.write(nb, out)
print("wrote", out)
