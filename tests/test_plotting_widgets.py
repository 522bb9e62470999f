"""ddpm_lib.plotting and ddpm_lib.widgets: tensors in, figures and widgets out."""

import io
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # the tests only inspect figures; the book build keeps its own backend

import pytest
import torch
from PIL import Image

from ddpm_lib import widgets
from ddpm_lib.plotting import image_to_png, show_images, to_display
from ddpm_lib.widgets import (
    choice_grid_live,
    choice_grid_static,
    noise_slider_live,
    noise_slider_static,
)


def test_to_display_maps_range_and_layout():
    grey = to_display(torch.tensor([[[-1.0, 0.0], [1.0, 3.0]]]))
    assert grey.shape == (2, 2)
    assert grey.tolist() == [[0.0, 0.5], [1.0, 1.0]]  # clamped to [-1, 1]
    assert to_display(torch.zeros(3, 4, 5)).shape == (4, 5, 3)
    with pytest.raises(ValueError, match="one image"):
        to_display(torch.zeros(2, 4, 4))


def test_show_images_grid():
    fig = show_images(torch.zeros(7, 1, 8, 8), titles=list("abcdefg"), ncols=4)
    assert len(fig.axes) == 8
    assert [ax.get_title() for ax in fig.axes[:7]] == list("abcdefg")
    with pytest.raises(ValueError, match="N, C, H, W"):
        show_images(torch.zeros(1, 8, 8))


def test_image_to_png_scales_up():
    png = image_to_png(torch.zeros(1, 28, 28), size_px=100)
    img = Image.open(io.BytesIO(png))
    assert img.size == (84, 84)  # 28 * 3


def test_static_slider_links_slider_to_stack(monkeypatch):
    ipywidgets = pytest.importorskip("ipywidgets")
    links = []
    real_jslink = ipywidgets.jslink
    monkeypatch.setattr(
        ipywidgets, "jslink", lambda a, b: links.append((a, b)) or real_jslink(a, b)
    )
    frames = torch.stack([torch.full((1, 4, 4), v) for v in (-1.0, 0.0, 1.0)])
    box = noise_slider_static(frames, [0, 10, 20])
    slider, stack = box.children
    assert isinstance(stack, ipywidgets.Stack)
    assert list(slider.options) == ["0", "10", "20"]
    assert len({img.value for img in stack.children}) == 3  # three different pictures
    # The link itself acts in the browser (tests/test_browser.py); here: the right traits.
    assert links == [((slider, "index"), (stack, "selected_index"))]
    with pytest.raises(ValueError, match="one frame"):
        noise_slider_static(frames, [0, 10])


def test_live_slider_recomputes():
    pytest.importorskip("ipywidgets")
    calls = []

    def make_image(t):
        calls.append(t)
        return torch.full((1, 4, 4), t / 10 - 1)

    box = noise_slider_live(make_image, num_timesteps=20)
    slider, image = box.children
    before = image.value
    slider.value = 15
    assert calls == [0, 15] and image.value != before


def test_two_static_sliders_choose_among_precomputed_pictures(monkeypatch):
    """choice_grid_static: slider 1 picks a row of frames (the outer Stack), slider 2 a frame
    of every row (each inner Stack); the links act in the browser, here the right traits."""
    ipywidgets = pytest.importorskip("ipywidgets")
    links = []
    real_jslink = ipywidgets.jslink
    monkeypatch.setattr(
        ipywidgets, "jslink", lambda a, b: links.append((a, b)) or real_jslink(a, b)
    )
    values = torch.linspace(-1, 1, 6).reshape(2, 3)  # frames[i, j] is grey level values[i, j]
    frames = values[:, :, None, None, None].expand(2, 3, 1, 4, 4)
    box = choice_grid_static(frames, [3, 7], [0.0, 2.0, 4.0], names=("digit", "w"))
    slider_a, slider_b, outer = box.children
    assert list(slider_a.options) == ["3", "7"] and list(slider_b.options) == ["0.0", "2.0", "4.0"]
    assert (slider_a.description, slider_b.description) == ("digit", "w")
    assert len(outer.children) == 2 and all(len(inner.children) == 3 for inner in outer.children)
    pictures = [[p.value for p in inner.children] for inner in outer.children]
    for i in range(2):
        for j in range(3):  # each picture is its own frame's
            expected = image_to_png(frames[i, j], 320)
            assert pictures[i][j] == expected
    assert len({v for row in pictures for v in row}) == 6
    assert links[0] == ((slider_a, "index"), (outer, "selected_index"))
    assert links[1:] == [
        ((slider_b, "index"), (inner, "selected_index")) for inner in outer.children
    ]
    with pytest.raises(ValueError, match="2 x 2 values"):
        choice_grid_static(frames, [3, 7], [0.0, 2.0])


def test_two_live_sliders_recompute_from_both_values():
    pytest.importorskip("ipywidgets")
    calls = []

    def make_image(digit, w):
        calls.append((digit, w))
        return torch.full((1, 4, 4), digit / 10 - w / 10)

    box = choice_grid_live(make_image, [3, 7], [0.0, 2.0], names=("digit", "w"))
    slider_a, slider_b, image = box.children
    first = image.value
    slider_a.value = 7
    slider_b.value = 2.0
    assert calls == [(3, 0.0), (7, 0.0), (7, 2.0)] and image.value != first


def test_slider_pictures_are_sized_for_the_page_and_never_stretched():
    """Each picture is shown at its PNG's width (a bare Image in a VBox would be stretched to
    the whole output), at most size_px, by a whole factor; the slider is as wide as it."""
    pytest.importorskip("ipywidgets")
    digits = torch.rand(3, 1, 28, 28) * 2 - 1
    static = noise_slider_static(digits, [0, 10, 20])
    live = noise_slider_live(lambda t: digits[0], num_timesteps=20)
    pair = noise_slider_static(torch.zeros(2, 3, 64, 128), [0, 1], size_px=640)
    for box, width in [(static, 28 * 11), (live, 28 * 11), (pair, 128 * 5)]:
        slider, shown = box.children
        pictures = shown.children if hasattr(shown, "selected_index") else [shown]
        for picture in pictures:
            assert Image.open(io.BytesIO(picture.value)).width == width
            assert picture.layout.width == f"{width}px" and picture.layout.max_width == "100%"
        assert slider.layout.width == f"{width}px"
    assert 28 * 11 <= 320 < 28 * 12  # the default size_px = 320: the largest whole factor


# Every widget of ddpm_lib.widgets that needs a running kernel.
LIVE_WIDGETS = [name for name in widgets.__all__ if name.endswith("_live")]


def test_live_sliders_are_hidden_from_the_static_book():
    """A live slider needs a kernel: every notebook cell that makes one (outside the library's
    own definition) carries remove-output, so that the rendered book shows only sliders that
    work there (DESIGN.md, Widgets). Jupyter and Colab ignore the tag."""
    hidden = {"remove-output", "remove_output", "remove-cell", "remove_cell"}
    live_cells = []  # (notebook, cell id, tags) of the cells that make a live slider
    for nb in sorted((Path(__file__).resolve().parents[1] / "notebooks").glob("*.ipynb")):
        for cell in json.loads(nb.read_text())["cells"]:
            src = "".join(cell["source"])
            if (
                cell["cell_type"] == "code"
                and "#| export" not in src
                and any(f"{name}(" in src for name in LIVE_WIDGETS)
            ):
                live_cells.append((nb.name, cell["id"], cell.get("metadata", {}).get("tags", [])))
    made_in = {name[:2] for name, _, _ in live_cells}
    assert {"02", "10"} <= made_in, f"chapters 02 and 10 have live sliders, found {made_in}"
    assert [cell for cell in live_cells if not hidden & set(cell[2])] == []
