"""The Gradio demo, ``examples/demo.py``: its functions on a tiny adapter, the launched app
through ``gradio_client``, and one end-to-end check in headless Chromium (Selenium).

The tiny adapter has the quad concepts (so the demo offers held-out quad images to edit), sits
on the tiny ``AutoencoderKL`` of ``conftest.py`` at 32 x 32, and is saved with
``save_pretrained``: the app is started by ``demo.main([FOLDER], block=False)``, the same
loading path as ``python examples/demo.py FOLDER``. Everything stays on 127.0.0.1.
"""

from __future__ import annotations

import importlib.util
import io
import os
import shutil
import socket
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import AutoencoderKL
from PIL import Image

from ctxadapter import ContextAutoencoder, CtxAdapter
from ctxadapter.data import quad
from ctxadapter.evaluation import QUADRANTS, corner_masks
from ctxadapter.images import preprocess_images
from ctxadapter.pinning import base_model_record
from ctxadapter.viz import concept_graph_image, image_grid

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
gr = pytest.importorskip("gradio", reason="the demo needs gradio: pip install -e '.[dev]'")

REPO = Path(__file__).resolve().parents[1]
CONCEPTS = list(quad.CONCEPTS)
SIZE = 32  # the tiny KL autoencoder downsamples by 8 -> latents (4, 4, 4)
# pandas 3 deprecations inside Gradio's queue, not ours
pytestmark = [
    pytest.mark.filterwarnings("ignore:'future.no_silent_downcasting' is deprecated"),
    pytest.mark.filterwarnings("ignore:The copy keyword is deprecated"),
]


def _load_demo_module():
    spec = importlib.util.spec_from_file_location("ctxadapter_demo", REPO / "examples/demo.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


demo = _load_demo_module()


def seeded(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image.convert("RGB"))


LOOPBACK = ("127.0.0.1", "::1", "localhost")


@pytest.fixture(scope="module", autouse=True)
def loopback_only():
    """Every connection this process opens during these tests (gradio, gradio_client, urllib,
    Selenium's commands to chromedriver) must go to this machine: any other is an error."""
    connect, connect_ex = socket.socket.connect, socket.socket.connect_ex

    def check(address):
        if isinstance(address, tuple) and address[0] not in LOOPBACK:
            raise AssertionError(f"the demo tests tried to reach {address!r}")

    def guarded_connect(self, address):
        check(address)
        return connect(self, address)

    def guarded_connect_ex(self, address):
        check(address)
        return connect_ex(self, address)

    socket.socket.connect, socket.socket.connect_ex = guarded_connect, guarded_connect_ex
    try:
        yield
    finally:
        socket.socket.connect, socket.socket.connect_ex = connect, connect_ex


@pytest.fixture(scope="module")
def adapter_path(tiny_kl_path: str, tmp_path_factory: pytest.TempPathFactory) -> str:
    """A random tiny adapter with the quad concepts, saved as an adapter folder that records
    its base autoencoder (so ``from_pretrained`` loads both)."""
    vae = AutoencoderKL.from_pretrained(tiny_kl_path)
    torch.manual_seed(0)
    adapter = CtxAdapter(
        CONCEPTS,
        latent_shape=[4, SIZE // 8, SIZE // 8],
        exogenous_width=4,
        concept_width=2,
        base_model=base_model_record(vae, tiny_kl_path),
    )
    folder = tmp_path_factory.mktemp("demo") / "adapter"
    adapter.save_pretrained(folder)
    return str(folder)


@pytest.fixture(scope="module")
def model(adapter_path: str) -> ContextAutoencoder:
    return demo.load_model(adapter_path)


@pytest.fixture(scope="module")
def served(adapter_path: str):
    """The demo launched by its own ``main`` on 127.0.0.1 (a free port), closed afterwards."""
    app = demo.main([adapter_path], block=False)
    try:
        yield app
    finally:
        app.close()


# ---------------------------------------------------------------------------------- loading


def test_load_model_is_from_pretrained_in_eval_mode(model, adapter_path):
    assert isinstance(model, ContextAutoencoder) and not model.training
    assert model.adapter.concepts == CONCEPTS and model.resolution == (SIZE, SIZE)
    reference = ContextAutoencoder.from_pretrained(adapter_path)
    for name, value in reference.state_dict().items():
        assert torch.equal(model.state_dict()[name], value), name


def test_missing_default_adapter_says_to_train_first(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no ctxadapter-quad/ here
    with pytest.raises(SystemExit, match="accelerate launch examples/finetune.py") as raised:
        demo.main([], block=False)
    assert "ctxadapter-quad" in str(raised.value) and "Hub id" in str(raised.value)


def test_missing_folder_is_not_looked_up_on_the_hub(tmp_path):
    missing = str(tmp_path / "no-such-adapter")
    with pytest.raises(demo.AdapterNotFoundError, match="neither an adapter folder nor a Hub id"):
        demo.load_model(missing)


def test_a_folder_that_is_not_an_adapter_is_a_clear_error(tmp_path):
    with pytest.raises(demo.AdapterNotFoundError, match="Could not load the adapter"):
        demo.load_model(str(tmp_path))


# ---------------------------------------------------------------------------------- the functions


def test_context_of_ticked_concepts(model):
    assert demo.context_of(model, []) == "obs"
    assert demo.context_of(model, None) == "obs"
    assert demo.context_of(model, ["size"]) == "size"
    assert demo.context_of(model, ["size", "quad1"]) == "quad1+size"  # concept order
    with pytest.raises(ValueError, match="unknown concept"):
        demo.context_of(model, ["colour"])


def test_no_tick_generates_the_obs_samples_of_the_same_seed(model):
    samples = demo.generate_samples(model, [], num_samples=5, seed=3)
    expected = model.generate("obs", num_samples=5, generator=seeded(3))
    assert torch.equal(samples, expected)
    assert torch.equal(demo.generate_samples(model, [], 5, 3), samples)  # same seed, same images
    assert not torch.equal(demo.generate_samples(model, [], 5, 4), samples)


def test_two_ticks_generate_the_composition(model):
    samples = demo.generate_samples(model, ["size", "quad1"], num_samples=4, seed=0)
    assert torch.equal(samples, model.generate("quad1+size", 4, generator=seeded(0)))
    assert not torch.equal(samples, model.generate("obs", 4, generator=seeded(0)))
    assert not torch.equal(samples, model.generate("quad1", 4, generator=seeded(0)))


def test_generate_grid_tiles_rows_of_eight(model):
    one_row = demo.generate_grid(model, ["quad2"], num_samples=8, seed=1)
    expected = image_grid(model.generate("quad2", 8, generator=seeded(1)), rows=1)
    assert np.array_equal(pixels(one_row), pixels(expected))
    # 10 samples: two rows of 8, the last 6 tiles white
    grid = demo.generate_grid(model, [], num_samples=10, seed=0)
    samples = model.generate("obs", 10, generator=seeded(0))
    padded = torch.cat([samples, torch.ones(6, 3, SIZE, SIZE)])
    assert np.array_equal(pixels(grid), pixels(image_grid(padded, rows=2)))
    # enlarged tiles: nearest neighbour, a whole factor
    big = demo.generate_grid(model, ["quad2"], num_samples=8, seed=1, scale=4)
    assert big.size == (8 * 4 * SIZE + 9 * 2, 4 * SIZE + 2 * 2)
    first = pixels(expected)[2 : 2 + SIZE, 2 : 2 + SIZE]  # the first tile, after the padding
    tile = pixels(big)[2 : 2 + 4 * SIZE, 2 : 2 + 4 * SIZE]
    assert np.array_equal(tile[::4, ::4], first)
    with pytest.raises(ValueError, match="num_samples"):
        demo.generate_grid(model, [], num_samples=0)


def test_edits_are_the_models_counterfactuals(model):
    image = Image.fromarray(quad.sample("obs", 1, split="test")[0][0])  # 64 x 64, resized to 32
    edits = demo.edit_images(model, image, ["size", "quad1"])
    assert list(edits) == ["input", "obs", *CONCEPTS, "quad1+size"]
    inputs = preprocess_images(image, SIZE, output="unit")
    assert torch.equal(edits["input"], inputs)
    for context, edited in edits.items():
        if context != "input":
            assert torch.equal(edited, model.counterfactual(inputs, context)), context
    # under its own context, obs, the residual edit is the autoencoder's reconstruction
    reconstruction = model.codec.postprocess(model.codec.decode(model.codec.encode(inputs * 2 - 1)))
    torch.testing.assert_close(edits["obs"], reconstruction, atol=1e-5, rtol=0)
    # the decode mode is the paper's edit; a single tick adds no row
    decoded = demo.edit_images(model, image, ["quad2"], mode="decode")
    assert list(decoded) == ["input", "obs", *CONCEPTS]
    assert torch.equal(decoded["quad2"], model.counterfactual(inputs, "quad2", mode="decode"))
    with pytest.raises(ValueError, match="mode"):
        demo.edit_images(model, image, [], mode="paint")
    with pytest.raises(ValueError, match="Upload an image"):
        demo.edit_images(model, None)


def test_edit_image_captions_and_pictures(model):
    image = Image.fromarray(quad.sample("obs", 1, split="test")[0][0])
    pairs = demo.edit_image(model, image, ["quad1", "quad2"], scale=2)
    captions = [caption for _, caption in pairs]
    assert captions == ["input", "obs", *CONCEPTS, "quad1+quad2"]
    assert all(picture.size == (2 * SIZE, 2 * SIZE) for picture, _ in pairs)
    edits = demo.edit_images(model, image, ["quad1", "quad2"])
    expected = image_grid(edits["quad3"], 1, padding=0)
    assert np.array_equal(pixels(pairs[4][0])[::2, ::2], pixels(expected))
    decoded = demo.edit_image(model, image, ["size"], mode="decode")
    assert [caption for _, caption in decoded] == ["input", "obs", *CONCEPTS]
    expected = image_grid(model.counterfactual(edits["input"], "size", mode="decode"), 1, padding=0)
    assert np.array_equal(pixels(decoded[6][0]), pixels(expected))
    stronger = demo.edit_image(model, image, ["size"], strength=3)
    expected = image_grid(model.counterfactual(edits["input"], "size", strength=3), 1, padding=0)
    assert np.array_equal(pixels(stronger[6][0]), pixels(expected))


def test_graph_picture_is_the_concept_graph_of_the_ticked_context(model):
    for ticked, context in (([], "obs"), (["quad1"], "quad1"), (["size", "quad2"], "quad2+size")):
        expected = concept_graph_image(
            model.adapter.concept_graph(context),
            CONCEPTS,
            title=f"Learned concept graph ({context})",
        )
        assert np.array_equal(pixels(demo.graph_picture(model, ticked)), pixels(expected))


def test_examples_are_heldout_quad_images_for_quad_adapters_only(model, tiny_kl_path):
    examples = [pixels(example) for example in demo.example_images(model)]
    candidates, latents = quad.sample("obs", demo.EXAMPLE_CANDIDATES, split="test")
    assert len(examples) == demo.EXAMPLE_COUNT
    # each example is a distinct held-out test image
    chosen = [next(i for i, c in enumerate(candidates) if np.array_equal(c, e)) for e in examples]
    assert len(set(chosen)) == demo.EXAMPLE_COUNT
    # ranked by the smallest move, over the four quadrant interventions, of the intervened
    # quadrant's corner colour in the image's true counterfactual
    masks = corner_masks((64, 64))
    smallest = np.full(len(candidates), np.inf)
    for q in QUADRANTS:
        truth = quad.latents_to_images(quad.counterfactual_latents(latents, q))
        move = np.abs(truth.astype(float) - candidates)[:, masks[q].numpy()].mean(axis=(1, 2))
        smallest = np.minimum(smallest, move)
    assert list(chosen) == sorted(chosen, key=lambda i: -smallest[i])
    others = np.delete(smallest, chosen)
    assert smallest[chosen].min() >= others.max()
    # the first test image is not an example: its bottom right barely moves under quad2
    assert 0 not in chosen and smallest[0] < others.max()
    vae = AutoencoderKL.from_pretrained(tiny_kl_path)
    other = ContextAutoencoder(vae, CtxAdapter(["a", "b"], latent_shape=[4, 4, 4]))
    assert demo.example_images(other) == []


def test_describe_names_the_adapter(model, tiny_kl_path):
    header = demo.describe(model, "tiny")
    assert header.startswith("# ctxadapter demo: `tiny`")
    assert "`quad1`" in header and "32 x 32" in header and tiny_kl_path in header


def test_build_demo_without_launching(model):
    blocks = demo.build_demo(model, name="tiny", examples=[])
    assert isinstance(blocks, gr.Blocks)
    names = {dependency.api_name for dependency in blocks.fns.values()}
    assert {"generate", "edit", "graph"} <= names


def test_the_page_opens_with_samples_and_an_edit(model):
    example = demo.example_images(model)[0]
    assert demo.opening_image(model, [example]) is example
    sample = demo.generate_samples(model, (), 1, 0)
    assert np.array_equal(
        pixels(demo.opening_image(model, [])), pixels(image_grid(sample, 1, padding=0))
    )
    blocks = demo.build_demo(model, examples=[example])
    shown = {block.elem_id: block.value for block in blocks.blocks.values() if block.elem_id}
    scale = demo.display_scale(model)
    with Image.open(shown["samples"]["path"]) as samples:
        assert np.array_equal(pixels(samples), pixels(demo.generate_grid(model, scale=scale)))
    assert [item["caption"] for item in shown["edits"]] == ["input", "obs", *CONCEPTS]
    with Image.open(shown["image"]["path"]) as image:
        assert np.array_equal(pixels(image), pixels(example))


def test_an_edit_far_from_the_training_domain_warns_on_the_page(model, monkeypatch):
    shown = []
    monkeypatch.setattr(gr, "Warning", shown.append)
    blocks = demo.build_demo(model, examples=[])
    [on_edit] = [fn.fn for fn in blocks.fns.values() if fn.api_name == "edit"]
    model.adapter.config["base_model"]["reconstruction_mse"] = 1e-9
    try:
        on_edit(Image.new("RGB", (SIZE, SIZE), (255, 0, 0)), [], "residual", 1)
    finally:
        del model.adapter.config["base_model"]["reconstruction_mse"]
    assert len(shown) == 1 and "far outside this adapter's training domain" in shown[0]


# ---------------------------------------------------------------------------------- the app


def test_app_through_gradio_client(served, model, tmp_path):
    from gradio_client import Client, handle_file

    assert served.local_url.startswith("http://127.0.0.1:")
    client = Client(served.local_url, verbose=False, download_files=str(tmp_path))
    scale = demo.display_scale(model)
    path = client.predict(["quad1", "size"], 8, 5, api_name="/generate")
    expected = demo.generate_grid(model, ["quad1", "size"], 8, 5, scale=scale)
    with Image.open(path) as grid:
        assert np.array_equal(pixels(grid), pixels(expected))

    context, graph_path = client.predict(["size", "quad2"], api_name="/graph")
    assert context == "quad2+size"
    with Image.open(graph_path) as graph:
        assert np.array_equal(pixels(graph), pixels(demo.graph_picture(model, ["quad2", "size"])))

    example = demo.example_images(model)[0]
    example.save(tmp_path / "example.png")
    gallery = client.predict(
        handle_file(str(tmp_path / "example.png")), ["quad3"], "residual", 2.5, api_name="/edit"
    )
    assert [item["caption"] for item in gallery] == ["input", "obs", *CONCEPTS]
    expected = demo.edit_image(model, example, ["quad3"], strength=2.5, scale=scale)
    for item, (picture, _) in zip(gallery, expected, strict=True):
        with Image.open(item["image"]) as received:
            assert np.array_equal(pixels(received), pixels(picture)), item["caption"]


# ---------------------------------------------------------------------------------- the browser


def _chromium(capsys: pytest.CaptureFixture):
    """A headless Chromium from the system packages (``chromium`` and ``chromedriver`` on
    PATH; nothing is downloaded), resolving no host but 127.0.0.1. Skips, saying why, when
    either (or Selenium) is missing."""
    missing = [name for name in ("chromium", "chromedriver") if shutil.which(name) is None]
    reason = None
    if missing:
        reason = (
            f"{' and '.join(missing)} not on PATH: install Debian's packages "
            "(apt-get install chromium chromium-driver) to run the browser test"
        )
    elif importlib.util.find_spec("selenium") is None:
        reason = "selenium is not installed (pip install -e '.[dev]')"
    if reason:
        with capsys.disabled():
            print(f"\nSKIPPED browser test: {reason}", file=sys.stderr)
        pytest.skip(reason)
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium")
    for argument in (
        "--headless=new",
        "--no-sandbox",  # CI runs as root
        "--disable-dev-shm-usage",
        "--disable-gpu",
        "--window-size=1280,1600",
        "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-default-apps",
        "--disable-extensions",
        "--disable-sync",
        "--no-first-run",
        f"--user-data-dir={tempfile.mkdtemp(prefix='ctxadapter-chromium-')}",
    ):
        options.add_argument(argument)
    # an explicit driver path: Selenium Manager (which would download one) is never run
    service = Service(executable_path=shutil.which("chromedriver"))
    return webdriver.Chrome(options=options, service=service)


def test_browser_tick_generate_and_see_the_samples(served, model, capsys):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    start = time.perf_counter()
    driver = _chromium(capsys)
    try:
        wait = WebDriverWait(driver, 60)
        driver.get(served.local_url)
        opening = wait.until(lambda d: d.find_element(By.CSS_SELECTOR, "#samples img[src]"))
        opening_source = opening.get_attribute("src")  # the obs samples the page opens with
        checkbox = wait.until(
            lambda d: d.find_element(By.CSS_SELECTOR, "#concepts input[name='quad1']")
        )
        checkbox.click()
        context = driver.find_element(By.CSS_SELECTOR, "#context textarea")
        wait.until(lambda d: context.get_attribute("value") == "quad1")
        driver.find_element(By.ID, "generate").click()
        image = wait.until(
            lambda d: (
                (found := d.find_element(By.CSS_SELECTOR, "#samples img[src]"))
                and found.get_attribute("src") != opening_source
                and found
            )
        )
        source = image.get_attribute("src")
        assert source.startswith(served.local_url)
        with urllib.request.urlopen(source, timeout=30) as response:
            received = Image.open(io.BytesIO(response.read()))
        expected = demo.generate_grid(model, ["quad1"], 8, 0, scale=demo.display_scale(model))
        assert np.array_equal(pixels(received), pixels(expected))
        wait.until(lambda d: d.execute_script("return arguments[0].naturalWidth", image) > 0)
        # the page fetched nothing from anywhere but the demo's own server
        resources = driver.execute_script(
            "return performance.getEntriesByType('resource').map(e => e.name)"
        )
        assert resources and all(url.startswith(served.local_url) for url in resources)
    finally:
        driver.quit()
    with capsys.disabled():
        print(f"\nbrowser test: {time.perf_counter() - start:.1f} s", file=sys.stderr)
