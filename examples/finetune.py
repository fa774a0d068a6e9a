"""Train a context adapter on a frozen pretrained autoencoder.

    accelerate launch examples/finetune.py                 # built-in quad data and autoencoder
    accelerate launch examples/finetune.py \
        --pretrained_model_name_or_path stabilityai/sd-vae-ft-mse --resolution 256 \
        --dataset_name user/my-interventional-images --context_column context \
        --output_dir my-adapter --push_to_hub

``--help`` lists every flag; ``--preset paper`` gives the paper's exact setup. The output
folder holds the adapter (``config.json``, ``model.safetensors``, ``README.md``), sample
grids, the concept-graph picture, ``metrics.json``, tensorboard logs and resumable
``checkpoint-<step>`` folders.
"""

from ctxadapter.training import finetune, parse_finetune_arguments

if __name__ == "__main__":
    finetune(parse_finetune_arguments())
