"""Pretrain a small diffusers ``AutoencoderKL`` on any image dataset (contexts pooled).

    accelerate launch examples/pretrain_autoencoder.py --output_dir my-quad-autoencoder
    accelerate launch examples/pretrain_autoencoder.py --train_data_dir my-images --resolution 128

It takes the same data flags as ``finetune.py``; ``--help`` lists them all. Without
``--output_dir`` the autoencoder is written to a folder named after the data
(``my-images-autoencoder`` for the second command, ``quad-autoencoder`` for the quad data).
"""

from transformers import HfArgumentParser

from ctxadapter.training import PretrainArguments, pretrain_autoencoder
from ctxadapter.training.errors import one_line_errors

if __name__ == "__main__":
    with one_line_errors("pretrain_autoencoder.py"):
        (args,) = HfArgumentParser(PretrainArguments).parse_args_into_dataclasses()
        pretrain_autoencoder(args)
