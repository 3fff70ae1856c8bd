"""Issue 30 item 4 in the app: each adapter row's painted region and schedule (`miva.app.regions`) reach the
pipeline as `adapter_masks` / `adapter_schedules`, keyed by the pipeline's adapter names; bad schedules are one line
in the form's words. Without a browser: the Animate callback gets the form's values; the pipeline call is recorded
(its region arguments are taken out before the real call, so this runs before the pipeline has them)."""

import numpy as np
import pytest
from PIL import Image

from miva import MIVAAdapterConfig, MIVAPipeline
from miva.app.animate import AdapterPick, AnimateRequest, Animator, check_request, request_from_form
from miva.app.bases import resolve_base
from miva.app.layout import AdapterRow, AnimateForm
from miva.app.regions import editor_value, mask_from_editor, parse_schedule
from miva.app.registry import AdapterRegistry, AppInputError
from miva.tiny import make_test_image, tiny_components

REGION_ARGS = ("adapter_masks", "adapter_schedules")


class Box:
    """A stand-in for a Gradio component: a hashable key of the values dict."""

    def __init__(self, name):
        self.name = name


def _layer(size, box=None, alpha=255) -> Image.Image:
    layer = np.zeros((size[1], size[0], 4), np.uint8)
    if box is not None:
        left, top, right, bottom = box
        layer[top:bottom, left:right] = (255, 59, 48, alpha)
    return Image.fromarray(layer, "RGBA")


def test_the_painted_layer_is_the_mask():
    image = make_test_image(96, 64, seed=1)
    assert mask_from_editor(None) is None
    assert mask_from_editor(editor_value(image)) is None  # a fresh editor: nothing painted
    assert mask_from_editor({"background": image, "layers": [_layer((96, 64))], "composite": image}) is None
    value = {"background": image, "layers": [_layer((96, 64), (10, 5, 40, 20), alpha=128),
                                             _layer((96, 64), (30, 0, 50, 8))], "composite": image}
    expected = np.zeros((64, 96), np.float32)
    expected[5:20, 10:40] = 1.0  # paint is paint, whatever its opacity
    expected[0:8, 30:50] = 1.0  # the union of the layers
    np.testing.assert_array_equal(mask_from_editor(value), expected)
    assert editor_value(None) is None and editor_value(image)["background"] is image


@pytest.mark.parametrize(("text", "weights"), [
    ("", None), ("  ", None), ("1, 1, 0.5, 0", [1.0, 1.0, 0.5, 0.0]), ("1 -> 0", [1.0, 2 / 3, 1 / 3, 0.0]),
    ("0.5->0.5", [0.5] * 4), ("-1,2,0,1e-1", [-1.0, 2.0, 0.0, 0.1]),
])
def test_schedule_text(text, weights):
    parsed = parse_schedule(text, 4, "Adapter 1 schedule")
    assert parsed == pytest.approx(weights) if weights is not None else parsed is None


@pytest.mark.parametrize(("text", "message"), [
    ("1, 0", "Adapter 2 schedule: 2 weights for 4 frames; give one weight per frame (e.g. 1, 1, 0.5, 0) or a ramp "
             "(e.g. 1 -> 0)"),
    ("1, x, 0, 0", "Adapter 2 schedule: '1, x, 0, 0' is not a list of numbers; give one weight per frame "
                   "(e.g. 1, 1, 0.5, 0) or a ramp (e.g. 1 -> 0)"),
    ("1 -> 0 -> 1", "Adapter 2 schedule: '1 -> 0 -> 1': a ramp is two numbers, first -> last frame (e.g. 1 -> 0)"),
    ("1, nan, 0, 0", "Adapter 2 schedule: nan is not a finite number; give one weight per frame (e.g. 1, 1, 0.5, "
                     "0) or a ramp (e.g. 1 -> 0)"),
])
def test_bad_schedule_text_is_one_line_in_the_form_words(text, message):
    with pytest.raises(AppInputError) as error:
        parse_schedule(text, 4, "Adapter 2 schedule")
    assert str(error.value) == message


def test_a_python_request_with_a_wrong_schedule_length_is_refused():
    request = AnimateRequest(image=make_test_image(64, 64), num_frames=4,
                             adapters=[AdapterPick("wave", schedule=[1.0, 0.0])])
    with pytest.raises(AppInputError, match=r"^Schedule of 'wave': 2 weights for 4 frames;"):
        check_request(request, 16)


def _form() -> AnimateForm:
    names = ("image", "prompt", "negative_prompt", "parallel_mode", "num_frames", "steps", "guidance", "seed",
             "random_seed", "ca_maps")
    form = AnimateForm(**{k: Box(k) for k in names})
    form.adapters = [AdapterRow(*(Box(f"{part}{k}") for part in ("a", "w", "p", "m", "s"))) for k in range(2)]
    return form


def _values(form, image, rows) -> dict:
    values = {form.image: image, form.prompt: "x", form.negative_prompt: "", form.parallel_mode: "residual",
              form.num_frames: 4, form.steps: 2, form.guidance: 1.0, form.seed: 3, form.random_seed: False,
              form.ca_maps: False}
    for row, (choice, mask, schedule) in zip(form.adapters, rows):
        values.update({row.choice: choice, row.weight: 0.8, row.prompt: "", row.mask: mask, row.schedule: schedule})
    return values


def test_form_rows_become_picks_with_regions_and_schedules():
    form, image = _form(), make_test_image(64, 64, seed=2)
    painted = {"background": image, "layers": [_layer((64, 64), (0, 0, 32, 64))], "composite": image}
    request = request_from_form(form, _values(form, image, [("wave", painted, "1 -> 0"), ("(none)", None, "bad")]),
                                resolve_base("tiny").defaults)
    (pick,) = request.adapters  # the empty row is left out, its schedule text unread
    assert (pick.choice, pick.weight, pick.schedule) == ("wave", 0.8, pytest.approx([1.0, 2 / 3, 1 / 3, 0.0]))
    assert pick.mask.shape == (64, 64) and pick.mask[:, :32].min() == 1.0 and pick.mask[:, 32:].max() == 0.0
    plain = request_from_form(form, _values(form, image, [("wave", editor_value(image), ""), ("(none)", None, "")]),
                              resolve_base("tiny").defaults)
    assert plain.adapters[0].mask is None and plain.adapters[0].schedule is None


@pytest.fixture(scope="module")
def animator(tmp_path_factory):
    pipe = MIVAPipeline(**tiny_components(seed=0))
    pipe.add_adapter("wave", MIVAAdapterConfig(use_i2v=True, use_motion_lora=True))
    folder = pipe.save_adapter("wave", tmp_path_factory.mktemp("adapters") / "wave")
    return Animator(resolve_base("tiny"), AdapterRegistry({"my wave": folder}), tmp_path_factory.mktemp("app"))


@pytest.fixture
def recorded(monkeypatch):
    calls = []
    real = MIVAPipeline.__call__

    def call(self, *args, **kwargs):
        calls.append({k: kwargs.pop(k) for k in REGION_ARGS if k in kwargs})
        return real(self, *args, **kwargs)

    monkeypatch.setattr(MIVAPipeline, "__call__", call)
    return calls


def test_generate_hands_the_regions_to_the_pipeline_by_its_adapter_names(animator, recorded):
    image = make_test_image(128, 64, seed=2)  # wider than the video: the mask is cropped like the image
    mask = np.zeros((64, 128), np.float32)
    mask[:, :48] = 1.0  # the left 48 columns; the 64x64 crop keeps columns 32..95
    picks = [AdapterPick("my wave", 0.7, mask=mask, schedule=[1.0, 1.0, 0.5, 0.0])]
    animator.animate(AnimateRequest(image=image, adapters=picks, num_frames=4, num_inference_steps=1))
    name = animator.adapter_name("my wave")
    assert name != "my wave"  # the pipeline's own name (sanitised): the keys must be that one
    ((call),) = recorded
    assert call["adapter_schedules"] == {name: [1.0, 1.0, 0.5, 0.0]}
    assert list(call["adapter_masks"]) == [name]
    np.testing.assert_allclose(call["adapter_masks"][name], mask[:, 32:96], atol=1e-5)
    animator.animate(AnimateRequest(image=image, adapters=[AdapterPick("my wave")], num_frames=4,
                                    num_inference_steps=1))
    assert recorded[1] == {}  # no region, no schedule: no argument (the call stays what it was)


def test_the_page_has_a_region_and_a_schedule_per_row(tmp_path):
    pytest.importorskip("gradio")
    from miva.app.layout import ADAPTER_SLOTS, build_app

    app = build_app(resolve_base("tiny"), AdapterRegistry(), tmp_path)
    rows = app.animate.adapters
    assert len(rows) == ADAPTER_SLOTS
    assert [r.mask.elem_id for r in rows] == [f"adapter-{k}-region" for k in range(ADAPTER_SLOTS)]
    assert [r.schedule.label for r in rows] == [f"Adapter {k + 1} schedule" for k in range(ADAPTER_SLOTS)]
    assert {c for r in rows for c in (r.mask, r.schedule)} <= app.animate.inputs()
    changes = [d for d in app.blocks.config["dependencies"]
               if any(t[1] == "change" and t[0] == app.animate.image._id for t in d["targets"])]
    assert len(changes) == 1 and changes[0]["outputs"] == [r.mask._id for r in rows]
