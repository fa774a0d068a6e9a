"""The flag groups both training scripts share (data, optimisation, outputs); the
fine-tuning groups are in ``finetune_args``, pretraining's own flags in ``pretraining``.

Each group of flags is a small dataclass that checks its own values (``validate``, run on
construction); ``FinetuneArguments`` and ``PretrainArguments`` combine the groups they need, so
each script's flags are one flat dataclass for transformers' ``HfArgumentParser`` and for
Python (``finetune(FinetuneArguments(...))``). Choices are ``Literal`` types: ``--help`` lists
them and a bad value is an error naming the flag, the value and the choices. ``docs/flags.md``
is generated from these classes (``docs/gen_flags.py``), one table per group.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

from ..pinning import SHIPPED_AUTOENCODERS
from .flags import FlagGroup, check_at_least, flag

QUAD_AUTOENCODER = SHIPPED_AUTOENCODERS["ctxadapter:quad-autoencoder"]
"""The small ``AutoencoderKL`` pretrained on quad that ships with the package (see its
``README.md``): the default ``--pretrained_model_name_or_path``."""

PHOTO_AUTOENCODER = SHIPPED_AUTOENCODERS["ctxadapter:photo-autoencoder"]
"""The small general ``AutoencoderKL`` pretrained on crops of photographs that ships with the
package (see its ``README.md``): ``--pretrained_model_name_or_path ctxadapter:photo-autoencoder``
for a user's own photographs, offline."""


# ------------------------------------------------------------------------------ shared groups


@dataclass
class ImageDataArguments(FlagGroup):
    """Data: where the images come from."""

    dataset_name: str | None = flag(
        "A Hub dataset id, a save_to_disk folder or a local dataset. Default: the built-in quad "
        "data.",
        default=None,
    )
    dataset_config_name: str | None = flag("The dataset's configuration name.", default=None)
    train_data_dir: str | None = flag(
        "An imagefolder with a metadata.jsonl holding a context column.", default=None
    )
    image_column: str = flag("The column holding the images.", default="image")
    resolution: int | None = flag(
        "Images are resized and centre-cropped to this size (a multiple of the autoencoder's "
        "downsampling factor). Default: the autoencoder's sample_size.",
        default=None,
    )
    quad_images_per_context: int = flag(
        "Training images per context of the built-in quad data.", default=2000
    )
    quad_variant: Literal["dependent", "independent"] = flag(
        "Built-in quad data: 'dependent' (concepts causally related) or 'independent'.",
        default="dependent",
    )
    cache_dir: str | None = flag(
        "Where downloads, Arrow files and the latent cache are kept. Default: the datasets cache.",
        default=None,
    )

    @property
    def uses_quad(self) -> bool:
        """True when the built-in quad data is used (no dataset named)."""
        return not self.dataset_name and not self.train_data_dir

    def validate(self) -> None:
        super().validate()
        check_at_least(self, 1, "quad_images_per_context")


@dataclass
class OptimizationArguments(FlagGroup):
    """Optimisation: a linear warm-up then a cosine decay to ``MIN_LEARNING_RATE`` (the
    paper's schedule, ``ctxadapter.training.optimization``), run by Accelerate."""

    seed: int = flag("Seed for data order, initialisation and noise.", default=0)
    train_batch_size: int = flag("Batch size per device.", default=512)
    max_train_steps: int | None = flag(
        "Total optimizer steps; overrides --num_train_epochs.", default=None
    )
    num_train_epochs: int = flag("Epochs, when --max_train_steps is not given.", default=100)
    gradient_accumulation_steps: int = flag("Batches accumulated per optimizer step.", default=1)
    learning_rate: float = flag(
        "Peak learning rate (Adam); the paper's is 1e-3 (--preset paper).", default=4e-3
    )
    lr_warmup_steps: int = flag("Linear warm-up steps.", default=200)
    mixed_precision: Literal["no", "fp16", "bf16"] | None = flag(
        "'no', 'fp16' or 'bf16' (default: accelerate config).", default=None
    )
    cpu_threads: int | None = flag(
        "torch threads per process when training on the CPU (default: the available cores "
        "shared among the processes; OMP_NUM_THREADS is not used, because accelerate launch "
        "sets it to 1).",
        default=None,
    )

    def validate(self) -> None:
        super().validate()
        check_at_least(self, 1, "train_batch_size", "gradient_accumulation_steps")
        check_at_least(self, 1, "num_train_epochs")
        check_at_least(self, 0, "lr_warmup_steps")
        if self.cpu_threads is not None:
            check_at_least(self, 1, "cpu_threads")
        if self.max_train_steps is not None:
            check_at_least(self, 1, "max_train_steps")
        if not (math.isfinite(self.learning_rate) and self.learning_rate > 0):
            raise ValueError(f"--learning_rate must be > 0, got {self.learning_rate}")


@dataclass
class RunArguments(FlagGroup):
    """Outputs and logging: where the results go, whether an earlier run there may be
    replaced, and where training is logged."""

    output_dir: str = flag("Where the results are written.", default="ctxadapter-quad")
    overwrite_output_dir: bool = flag(
        "Replace the saved model and checkpoints of an earlier run in --output_dir (without "
        "it, such a folder is an error unless the run is resumed).",
        default=False,
    )
    report_to: str = flag(
        "Where to log: 'tensorboard', 'wandb', 'all' or 'none'.", default="tensorboard"
    )
