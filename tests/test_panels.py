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
        for _ in range(400):  # a loop that catches Stop like the arrows do: keep the last good result
            try:
                time.sleep(0.01)
            except KeyboardInterrupt:
                return self.steps_done
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
    assert "InvalidArgumentError" in p.status.value and "inputs" in p.status.value
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
    assert "held-out reward" in p.output.value and "<table" in p.output.value


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
    assert "β = 4" in p.heatmap.label


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
    assert p.job.cooperative and p.job.stop_event.is_set()  # the Trainer was asked to stop: no exception injected
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
    expected = prompt_to_reward(tiny, p.z_pos.value, p.z_neg.value)([p.x.value] * len(ys), ys)
    np.testing.assert_allclose(scored.scores, expected, atol=1e-5)
    np.testing.assert_allclose(p.figure.data[0].y, expected, atol=1e-5)
    assert scored.agreement.n_pairs == 6 and "pair accuracy" in p.output.value
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
    """The panel works in background threads (a slider move may wait for the running job): poll its live view."""
    deadline = time.monotonic() + timeout
    while label not in panel.live.value and panel.error is None and time.monotonic() < deadline:
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
