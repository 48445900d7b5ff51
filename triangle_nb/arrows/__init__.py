"""The six arrows of the triangle, one module per direction (survey §2–§7).

| module | arrow | paper |
|---|---|---|
| `reward_to_update` | reward ⇒ parameter update | §2, Eq. 1–2 |
| `update_to_reward` | parameter update ⇒ reward, and the Eq. 7 steering engine | §3, Eq. 3–7 |
| `prompt_to_update` | prompt ⇒ parameter update (context distillation) | §4, Eq. 8–10 |
| `update_to_prompt` | parameter update ⇒ prompt (prompt recovery) | §5, Eq. 11–13 |
| `prompt_to_reward` | prompt ⇒ reward (contrastive scoring, judges) | §6, Eq. 14–15 |
| `reward_to_prompt` | reward ⇒ prompt (prompt search, reward-conditioned prompts) | §7, Eq. 16–18 |

Each module's arrow is a function of the same name, exported as `tnb.<direction>`; this package re-exports
nothing, so `triangle_nb.arrows.<direction>` is always the module.
"""
