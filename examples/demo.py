"""An interactive demo of a trained context adapter, in the browser (Gradio), fully offline.

    pip install -e ".[demo]"
    python examples/demo.py                    # the default run's adapter, ctxadapter-quad/
    python examples/demo.py my-adapter --port 7860
    python examples/demo.py user/my-adapter    # a Hub id (downloaded once, then cached)

Tick concepts to choose a context (none ticked: ``obs``; several: a composition such as
``quad1+size``) and generate a grid of samples with a seed (the same seed gives the same
images); upload an image (or pick a held-out quad image, for a quad adapter) and see its
counterfactual edits under every single concept and under the ticked context; read the
learned concept graph of the ticked context. The page is served on 127.0.0.1 only; nothing
is downloaded (a Hub id needs the Hub, or its cached copy, once).

The panels are plain functions in ``demo_panels.py`` beside this file (``generate_grid``,
``edit_image``, ``graph_picture``, ``example_images``), re-exported here, that ``build_demo``
wires into a ``gradio.Blocks``; they can be called without a browser (``tests/test_demo.py``
does).
"""

from __future__ import annotations

import argparse
import math
import os
import re
import socket
import sys
import warnings

# Gradio's usage statistics would try to reach the network: keep the demo offline.
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
# The panels (demo_panels.py) lie beside this file, also when it is loaded by path (tests).
if os.path.dirname(os.path.abspath(__file__)) not in sys.path:
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import torch  # noqa: E402
from demo_panels import (  # noqa: E402, F401 (re-exported: demo.generate_samples...)
    DISPLAY_SIZE,
    EDIT_MODES,
    EXAMPLE_CANDIDATES,
    EXAMPLE_COUNT,
    GRID_COLUMNS,
    MAX_SAMPLES,
    context_of,
    describe,
    display_scale,
    edit_contexts,
    edit_image,
    edit_images,
    example_images,
    generate_grid,
    generate_samples,
    graph_picture,
    is_quad_adapter,
    opening_image,
)

from ctxadapter import ContextAutoencoder  # noqa: E402
from ctxadapter.domain import OutOfDomainWarning  # noqa: E402

DEFAULT_ADAPTER = "ctxadapter-quad"
"""What ``python examples/demo.py`` loads without an argument: the default run's output."""
MAX_STRENGTH = 4  # the edit-strength slider's top
HOST = "127.0.0.1"
CSS = "#samples img, #edits img, #graph img { image-rendering: pixelated; }"
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?$")


class AdapterNotFoundError(SystemExit):
    """The adapter to demo could not be found or loaded; its message says what to do."""


def _how_to_get_one() -> str:
    return (
        "Run the default training first (`accelerate launch examples/finetune.py`, which "
        f"writes {DEFAULT_ADAPTER}/), or pass an adapter folder or a Hub id: "
        "`python examples/demo.py FOLDER_OR_HUB_ID`."
    )


def load_model(adapter: str = DEFAULT_ADAPTER, device: str = "cpu") -> ContextAutoencoder:
    """``ContextAutoencoder.from_pretrained(adapter)`` in eval mode on ``device``, with a clear
    message (an ``AdapterNotFoundError``, which exits the script) when there is no such adapter.

    A name that is not a folder is tried on the Hub only if it looks like a Hub id
    (``user/name``); the default ``ctxadapter-quad`` is never looked up there.
    """
    adapter = os.fspath(adapter)
    if not os.path.isdir(adapter):
        if adapter == DEFAULT_ADAPTER:
            raise AdapterNotFoundError(
                f"No adapter folder {DEFAULT_ADAPTER!r} in {os.getcwd()}. {_how_to_get_one()}"
            )
        if not HUB_ID.match(adapter) or os.path.exists(adapter):
            raise AdapterNotFoundError(
                f"{adapter!r} is neither an adapter folder nor a Hub id. {_how_to_get_one()}"
            )
    try:
        model = ContextAutoencoder.from_pretrained(adapter)
    except (OSError, ValueError) as error:
        raise AdapterNotFoundError(
            f"Could not load the adapter {adapter!r}: {error}\n{_how_to_get_one()}"
        ) from error
    return model.to(device).eval()


# ---------------------------------------------------------------------------------- the page
def _gradio():
    try:
        import gradio
    except ImportError as error:
        raise SystemExit(
            'The demo needs Gradio: pip install -e ".[demo]" (or pip install gradio).'
        ) from error
    return gradio


def build_demo(model: ContextAutoencoder, name: str | None = None, examples=None):
    """The demo page of ``model`` as a ``gradio.Blocks`` (not launched; see ``launch``). It
    opens with the ``obs`` samples of seed 0 and the edits of ``opening_image`` already shown.

        Args:
            model: the adapter and its autoencoder, in eval mode.
            name: the adapter's folder or Hub id, shown in the header.
            examples: images offered for editing (default: ``example_images(model)``).

        API endpoints (for ``gradio_client``): ``/generate`` (concepts, samples, seed -> grid),
        ``/edit`` (image, concepts, mode, strength -> gallery) and ``/graph`` (concepts ->
        context, graph).
    """
    gr = _gradio()
    scale = display_scale(model)
    examples = example_images(model) if examples is None else list(examples)
    concept_names = list(model.adapter.concepts)
    opening = opening_image(model, examples)

    def on_generate(ticked, num_samples, seed):
        seed = 0 if seed is None else seed  # an emptied seed box
        return generate_grid(model, ticked, num_samples, seed, scale=scale)

    def on_edit(image, ticked, mode, strength):
        if image is None:
            raise gr.Error("Upload an image (or pick an example) to edit.")
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", OutOfDomainWarning)
            edits = edit_image(model, image, ticked, mode, float(strength), scale=scale)
        for message in dict.fromkeys(str(w.message) for w in caught):  # once per message
            gr.Warning(message)  # an image far from the training data: say so on the page
        return edits

    def on_ticks(ticked):
        return context_of(model, ticked), graph_picture(model, ticked)

    with gr.Blocks(title="ctxadapter demo") as demo:
        gr.Markdown(describe(model, name))
        with gr.Row():
            with gr.Column(scale=1, min_width=240):
                ticked = gr.CheckboxGroup(
                    concept_names,
                    label="Concepts to intervene on",
                    info="None ticked: obs. Several: a composition.",
                    elem_id="concepts",
                )
                context = gr.Textbox("obs", label="Context", interactive=False, elem_id="context")
                num_samples = gr.Slider(1, MAX_SAMPLES, value=GRID_COLUMNS, step=1, label="Samples")
                seed = gr.Number(0, precision=0, label="Seed (same seed, same images)")
                generate = gr.Button("Generate", variant="primary", elem_id="generate")
            with gr.Column(scale=3):
                samples = gr.Image(
                    generate_grid(model, (), GRID_COLUMNS, 0, scale=scale),
                    label="Samples under the ticked context",
                    type="pil",
                    format="png",
                    interactive=False,
                    elem_id="samples",
                )
                graph = gr.Image(
                    graph_picture(model),
                    label="Concept graph of the ticked context",
                    type="pil",
                    format="png",
                    interactive=False,
                    elem_id="graph",
                )
        with gr.Row():
            with gr.Column(scale=1, min_width=240):
                image = gr.Image(
                    opening,
                    label="Image to edit (treated as obs)",
                    type="pil",
                    format="png",
                    sources=["upload", "clipboard"],
                    height=200,
                    elem_id="image",
                )
                if examples:
                    gr.Examples(
                        [[example] for example in examples],
                        inputs=image,
                        label="Held-out quad images",
                    )
                mode = gr.Radio(
                    list(EDIT_MODES),
                    value="residual",
                    label="Edit mode",
                    info="residual keeps what the adapter does not model; decode is the "
                    "paper's edit, through the adapter alone.",
                )
                strength = gr.Slider(
                    0,
                    MAX_STRENGTH,
                    value=1,
                    step=0.25,
                    label="Edit strength",
                    info="1: the adapter's edit; above 1 exaggerates a faint one.",
                )
                edit = gr.Button("Edit", variant="primary", elem_id="edit")
            with gr.Column(scale=3):
                edits = gr.Gallery(
                    edit_image(model, opening, scale=scale),
                    label="Counterfactual edits: the same noise, another context "
                    "(obs: the reconstruction)",
                    format="png",
                    columns=math.ceil((len(concept_names) + 3) / 2),
                    height="auto",
                    object_fit="contain",
                    interactive=False,
                    elem_id="edits",
                )
        generate.click(on_generate, [ticked, num_samples, seed], samples, api_name="generate")
        edit.click(on_edit, [image, ticked, mode, strength], edits, api_name="edit")
        ticked.change(on_ticks, ticked, [context, graph], api_name="graph")
    return demo


def free_port(host: str = HOST) -> int:
    """A TCP port nobody listens on at ``host`` now."""
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def launch(demo, port: int | None = None, block: bool = True, quiet: bool = False):
    """Serve ``demo`` on ``http://127.0.0.1:PORT/`` (a free port by default), never shared,
    without server-side rendering or analytics. With ``block=False`` it returns at once
    (``prevent_thread_lock``); call ``demo.close()`` when done. Returns the page's URL."""
    gr = _gradio()
    demo.launch(
        server_name=HOST,
        server_port=port or free_port(),
        share=False,
        prevent_thread_lock=not block,
        quiet=quiet,
        ssr_mode=False,
        pwa=False,
        mcp_server=False,
        inbrowser=False,
        theme=gr.themes.Default(),
        css=CSS,
    )
    return demo.local_url


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument(
        "adapter",
        nargs="?",
        default=DEFAULT_ADAPTER,
        help="Adapter folder or Hub id (the default is the default run's output).",
    )
    parser.add_argument("--port", type=int, default=None, help="Port; None: a free one.")
    parser.add_argument(
        "--device",
        default="cuda" if torch.cuda.is_available() else "cpu",
        help="Device to run on: cuda if available, else cpu.",
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None, block: bool = True):
    """Load the adapter, build the page and serve it on 127.0.0.1. With ``block=False`` (for
    tests) returns the launched ``gradio.Blocks`` at once; close it with ``.close()``."""
    args = parse_args(argv)
    _gradio()  # fail early, before loading anything, if Gradio is missing
    model = load_model(args.adapter, args.device)
    demo = build_demo(model, name=args.adapter)
    url = launch(demo, args.port, block=block, quiet=not block)
    if not block:
        print(f"ctxadapter demo of {args.adapter} at {url}", file=sys.stderr)
    return demo


if __name__ == "__main__":
    main()
