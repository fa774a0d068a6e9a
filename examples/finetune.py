"""Train a context adapter on a frozen pretrained autoencoder.

    accelerate launch -q examples/finetune.py              # built-in quad data and autoencoder
    accelerate launch -q examples/finetune.py \
        --pretrained_model_name_or_path stabilityai/sd-vae-ft-mse --resolution 256 \
        --dataset_name user/my-interventional-images --context_column context \
        --output_dir my-adapter --push_to_hub

``--help`` lists every flag; ``--preset paper`` gives the paper's exact setup. The output
folder holds the adapter (``config.json``, ``model.safetensors``, ``README.md``), sample
grids, the concept-graph picture, ``metrics.json``, tensorboard logs and resumable
``checkpoint-<step>`` folders; the run ends with a summary of what it did.

Bad flags, data or Hub access end the run with one line, ``finetune.py: error: ...``, and
exit status 1 (``accelerate launch -q`` leaves out the launcher's own traceback after it).
"""

from ctxadapter.training import finetune, parse_finetune_arguments
from ctxadapter.training.errors import one_line_errors

if __name__ == "__main__":
    with one_line_errors("finetune.py"):
        finetune(parse_finetune_arguments())
