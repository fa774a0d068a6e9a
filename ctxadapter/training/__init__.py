"""Training with Accelerate: the two loops behind ``examples/finetune.py`` and
``examples/pretrain_autoencoder.py``, and their flags.

- ``args`` (shared), ``finetune_args`` and ``flags``: the flag groups and
  ``FinetuneArguments`` (read by transformers' ``HfArgumentParser``; ``--preset paper``
  through ``parse_finetune_arguments``);
- ``inputs``: what a run loads and checks before it writes anything;
- ``finetuning``: the fine-tuning loop, top to bottom, and ``outputs``: its output folder;
- ``pretraining``: ``PretrainArguments`` and the autoencoder pretraining loop;
- ``state``: early stopping, the noise generator and the checkpoint folders;
- ``output_dir``: the output folder's rules (not the base's folder, one run at a time, final
  files moved in when complete);
- ``optimization``, ``tracking``: the optimizer and schedule, the ``Accelerator``;
- ``errors``: bad input ends a script with one line.
"""

from .args import PHOTO_AUTOENCODER, QUAD_AUTOENCODER
from .finetune_args import PRESETS, FinetuneArguments, parse_finetune_arguments
from .finetuning import finetune
from .optimization import make_optimizer
from .pretraining import PretrainArguments, pretrain_autoencoder

__all__ = [
    "PHOTO_AUTOENCODER",
    "PRESETS",
    "QUAD_AUTOENCODER",
    "FinetuneArguments",
    "PretrainArguments",
    "finetune",
    "make_optimizer",
    "parse_finetune_arguments",
    "pretrain_autoencoder",
]
