"""``CtxAdapter``: the context module with its two heads, saved and loaded the Hugging Face way.

Data path (shapes for ``K`` concepts, widths ``w_in``/``w_out`` and a latent ``(C, h, w)``)::

    latents (N, C, h, w) --posterior head--> mean, logvar (N, K*w_in)
    z (N, K*w_in) --exogenous--> (N, K*w_in) --expressive--> eps (N, K*w_out)
      --causal--> c (N, K*w_out) --latent head--> latents (N, C, h, w)

Only this module is trained; the pretrained autoencoder around it stays frozen. Its folder holds
``config.json`` (hyper-parameters and the base autoencoder it was trained on),
``model.safetensors`` (these weights only) and ``README.md`` (the model card).
"""

from __future__ import annotations

import copy
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import safetensors.torch
import torch
from huggingface_hub import ModelCard, PyTorchModelHubMixin
from safetensors import SafetensorError
from torch import nn

from . import __version__
from .adapter_files import (
    CONFIG_DIGEST_KEY,
    CONFIG_NAME,
    LOCATION_KEYS,
    VERSION_KEY,
    WEIGHTS_NAME,
    check_config,
    check_finite,
    check_location,
    check_weights,
    config_digest,
    describe,
    read_config,
    weights_file,
)
from .card import PAPER_URL, TAGS, model_card
from .config import AdapterConfig
from .contexts import OBSERVATIONAL, context_mask
from .heads import latent_head, posterior_head, resolve_heads
from .layers import CausalLayer, ExogenousLayer, ExpressiveLayers
from .readouts import CausalReadouts


@dataclass
class AdapterOutput:
    """What ``CtxAdapter.forward`` returns.

    Attributes:
        latents: reconstructed model-space latents ``(N, C, h, w)`` (decoded from ``noise``).
        mean: posterior mean of the noise ``(N, K*w_in)``.
        logvar: posterior log-variance of the noise ``(N, K*w_in)``.
        noise: the posterior sample ``z`` that was decoded ``(N, K*w_in)``.
        mean_latents: latents ``(N, C, h, w)`` decoded from ``mean`` under each row's own
            context, as ``ContextAutoencoder.reconstruct`` decodes an image
            (``forward(..., sample_matching=True)``), else ``None``.
        generated: latents ``(N, C, h, w)`` decoded from one prior draw per row under the
            row's context (``forward(..., sample_matching=True)``), else ``None``.
        counterfactuals: latents ``(N, C, h, w)`` decoded, under each row's context, from the
            posterior mean of another row of the batch, as ``ContextAutoencoder.counterfactual``
            edits an image (``forward(..., sample_matching=True)``), else ``None``.
        sources: ``(N,)`` which row each counterfactual edits: row ``n`` of
            ``counterfactuals`` is ``mean[sources[n]]`` decoded under row ``n``'s context, an
            edit of ``mean_latents[sources[n]]`` (``forward(..., sample_matching=True)``), else
            ``None``.
    """

    latents: torch.Tensor
    mean: torch.Tensor
    logvar: torch.Tensor
    noise: torch.Tensor
    mean_latents: torch.Tensor | None = None
    generated: torch.Tensor | None = None
    counterfactuals: torch.Tensor | None = None
    sources: torch.Tensor | None = None


def _check_concepts(concepts) -> list[str]:
    if isinstance(concepts, str) or not concepts:
        raise ValueError(f"concepts must be a non-empty list of names, got {concepts!r}")
    for name in concepts:
        if not isinstance(name, str) or not name or "+" in name or name == OBSERVATIONAL:
            raise ValueError(
                f"Invalid concept name {name!r} in {concepts!r}: names are non-empty strings "
                f"without '+', and {OBSERVATIONAL!r} is reserved for the observational context."
            )
    if len(set(concepts)) != len(concepts):
        raise ValueError(f"concepts must be unique, got {concepts!r}")
    return list(concepts)


def _check_latent_shape(value) -> list[int]:
    values = list(value) if isinstance(value, (list, tuple)) else [value]
    if len(values) != 3 or not all(
        isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in values
    ):
        raise ValueError(f"latent_shape must be 3 positive integers, got {value!r}")
    return values


class CtxAdapter(
    nn.Module,
    CausalReadouts,
    PyTorchModelHubMixin,
    library_name="ctxadapter",
    tags=TAGS,
    paper_url=PAPER_URL,
):
    """The context module between a frozen encoder and a frozen decoder.

    ``CtxAdapter(concepts, latent_shape)`` builds the adapter ``examples/finetune.py`` trains
    by default; ``CtxAdapter(concepts, latent_shape, **AdapterConfig.paper().to_dict())`` the
    paper's.

    Args:
        concepts: the ``K`` concept names, in order (``"obs"`` is reserved).
        latent_shape: the autoencoder's model-space latent shape ``[C, h, w]``.
        base_model: where the frozen autoencoder comes from, recorded so that
            ``ContextAutoencoder.from_pretrained`` can load it: keys
            ``pretrained_model_name_or_path``, ``revision``, ``subfolder``, ``class_name``,
            ``scaling_factor``, ``shift_factor``.
        decoder_lora: the decoder LoRA's settings when the decoder was fine-tuned
            (``rank``, ``alpha``, ``target_modules``), else ``None``.
        **settings: fields of ``ctxadapter.config.AdapterConfig`` (the architecture: widths,
            depth, mixing, composition, pooling, bias, heads), each defaulting to its value
            there. An unknown name or a bad value is a ``ValueError`` naming it.

    ``config`` holds every argument (``heads="auto"`` resolved to the kind chosen); it is what
    ``save_pretrained`` writes to ``config.json``, so a saved adapter records its whole
    architecture and loads unchanged whatever the defaults become.
    """

    def __init__(
        self,
        concepts: list[str],
        latent_shape: list[int],
        base_model: dict | None = None,
        decoder_lora: dict | None = None,
        **settings,
    ):
        super().__init__()
        concepts = _check_concepts(concepts)
        latent_shape = _check_latent_shape(latent_shape)
        s = AdapterConfig().updated(settings, "CtxAdapter")
        s = s.updated({"heads": resolve_heads(s.heads, tuple(latent_shape))})
        self.config: dict[str, Any] = dict(
            concepts=concepts,
            latent_shape=latent_shape,
            **s.to_dict(),
            base_model=dict(base_model) if base_model else None,
            decoder_lora=dict(decoder_lora) if decoder_lora else None,
        )
        self.concepts = concepts
        self.latent_shape = tuple(latent_shape)
        self.pooled = s.pooled
        self.posterior_context = s.posterior_context
        k = len(concepts)
        self.noise_size = k * s.exogenous_width
        shape = self.latent_shape
        extra = k if s.posterior_context else 0
        self.posterior_head = posterior_head(
            s.heads, shape, s.head_width, 2 * self.noise_size, extra
        )
        self.exogenous = ExogenousLayer(
            k, s.exogenous_width, s.observational_mixing, s.exogenous_bias
        )
        self.expressive = ExpressiveLayers(
            k, s.exogenous_width, s.concept_width, s.expressive_depth
        )
        self.causal = CausalLayer(k, s.concept_width, s.composition, s.causal_effects)
        self.latent_head = latent_head(s.heads, k * s.concept_width, s.head_width, shape, k)
        # log standard deviation of the Gaussian likelihood of the latent loss (learned)
        self.latent_log_scale = nn.Parameter(torch.zeros(()))

    # ------------------------------------------------------------------ contexts
    def context_mask(self, contexts, batch_size: int) -> torch.Tensor:
        """Contexts of a batch (see ``ctxadapter.contexts.context_mask``) -> ``(N, K)``
        bool. A pooled adapter ignores them: every row is observational."""
        device = self.latent_log_scale.device
        mask = context_mask(contexts, self.concepts, batch_size, device=device)
        return torch.zeros_like(mask) if self.pooled else mask

    # ------------------------------------------------------------------ data path
    def posterior(
        self, latents: torch.Tensor, contexts=OBSERVATIONAL
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Model-space latents ``(N, C, h, w)`` of images of ``contexts`` -> ``(mean,
        logvar)``, each ``(N, K*w_in)``. With ``posterior_context`` the head also reads the
        context (abduction under the image's own causal model), else ``contexts`` is unused."""
        if tuple(latents.shape[1:]) != self.latent_shape:
            raise ValueError(
                f"Expected latents of shape (N, {', '.join(map(str, self.latent_shape))}), got "
                f"{tuple(latents.shape)}."
            )
        features = latents.flatten(1)
        if self.posterior_context:
            mask = self.context_mask(contexts, len(latents)).to(features.dtype)
            features = torch.cat([features, mask], dim=1)
        mean, logvar = self.posterior_head(features).chunk(2, dim=1)
        return mean, logvar

    def concepts_from_noise(self, z: torch.Tensor, contexts) -> torch.Tensor:
        """Noise ``z`` ``(N, K*w_in)`` under ``contexts`` -> concept values ``c``
        ``(N, K*w_out)``, block ``k`` belonging to concept ``k``."""
        if z.ndim != 2 or z.shape[1] != self.noise_size:
            raise ValueError(
                f"Expected noise of shape (N, {self.noise_size}), got {tuple(z.shape)}."
            )
        mask = self.context_mask(contexts, z.shape[0])
        return self.causal(self.expressive(self.exogenous(z, mask)), mask)

    def latents_from_noise(self, z: torch.Tensor, contexts) -> torch.Tensor:
        """Noise ``z`` ``(N, K*w_in)`` under ``contexts`` -> model-space latents
        ``(N, C, h, w)``."""
        return self.latent_head(self.concepts_from_noise(z, contexts)).view(-1, *self.latent_shape)

    def sample_noise(
        self, num_samples: int, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """Prior noise ``z ~ N(0, I)``: ``(num_samples, K*w_in)``."""
        return torch.randn(
            num_samples,
            self.noise_size,
            generator=generator,
            device=self.latent_log_scale.device,
            dtype=self.latent_log_scale.dtype,
        )

    def forward(
        self,
        latents: torch.Tensor,
        contexts,
        generator: torch.Generator | None = None,
        sample_matching: bool = False,
    ) -> AdapterOutput:
        """Encode to the posterior, draw ``z`` with the reparameterisation trick, decode to
        latents under ``contexts``. ``latents`` ``(N, C, h, w)`` -> ``AdapterOutput``.

        With ``sample_matching`` (for the training objective's terms that compare decoded rows
        with the data), every row is also decoded under its own context from three more
        kinds of noise: its posterior mean (``mean_latents``: what ``reconstruct`` decodes),
        one prior draw ``N(0, I)`` (``generated``) and the posterior mean of another row of the
        batch, a random permutation (``counterfactuals``: an edit of a real image, decoded
        from the same noise as ``counterfactual`` decodes it). The permutation is drawn after
        the posterior noise and before the prior draws. All four go through the layers in one
        pass of ``4N`` rows (cheaper on the CPU than four of ``N``); in training mode the
        BatchNorm statistics of the expressive layers are then those of every kind of row."""
        mask = self.context_mask(contexts, len(latents))  # parsed once, for both directions
        mean, logvar = self.posterior(latents, mask)
        noise = torch.randn(mean.shape, generator=generator, device=mean.device, dtype=mean.dtype)
        z = mean + torch.exp(0.5 * logvar) * noise
        if not sample_matching:
            return AdapterOutput(self.latents_from_noise(z, mask), mean, logvar, z)
        others = torch.randperm(len(z), generator=generator, device=z.device)
        drawn = self.sample_noise(len(z), generator=generator)
        decoded, from_mean, counterfactuals, generated = self.latents_from_noise(
            torch.cat([z, mean, mean[others], drawn]), mask.repeat(4, 1)
        ).chunk(4)
        return AdapterOutput(
            decoded, mean, logvar, z, from_mean, generated, counterfactuals, sources=others
        )

    # ------------------------------------------------------------------ causal layer
    @torch.no_grad()
    def apply_constraints_(self) -> None:
        """Project the causal layer's learnable weights into the box ``[0, 1]``. Call after
        every optimizer step."""
        self.causal.clamp_()

    # ------------------------------------------------------------------ saving and loading
    def save_pretrained(
        self, save_directory, *, config: dict | None = None, model_card_kwargs=None, **kwargs
    ):
        """``huggingface_hub``'s ``save_pretrained`` (and, through it, ``push_to_hub``):
        ``model.safetensors``, ``config.json`` and the model card, both of ``config`` (default:
        ``self.config``) with ``ctxadapter_version``. A given ``config`` is copied, never
        kept: the adapter's own is unchanged. ``kwargs``: ``push_to_hub``, ``repo_id`` and the
        upload's arguments.

        Raises:
            ValueError: for a ``config`` that differs from ``self.config`` in more than where
                the base autoencoder is found (``LOCATION_KEYS`` of ``base_model``): it would
                not describe these weights.
        """
        config = copy.deepcopy(self.config if config is None else dict(config))
        if config_digest(config) != config_digest(self.config):
            raise ValueError(
                "The config to save differs from the adapter's in more than where its base "
                f"autoencoder is ({', '.join(LOCATION_KEYS)} of base_model): it would not "
                "describe these weights."
            )
        config[VERSION_KEY] = __version__
        card = {**(model_card_kwargs or {}), "config": config}
        return super().save_pretrained(
            save_directory, config=config, model_card_kwargs=card, **kwargs
        )

    def _save_pretrained(self, save_directory: Path) -> None:
        # The weights only: save_pretrained writes the config it was given beside them. Their
        # metadata records the latent shape (the heads' weights only know the number of latent
        # values, so an edited config with the same count is caught) and the hash of the config
        # (a folder mixing two saves is caught).
        metadata = {
            "latent_shape": json.dumps(list(self.config["latent_shape"])),
            CONFIG_DIGEST_KEY: config_digest(self.config),
        }
        safetensors.torch.save_model(
            self, str(Path(save_directory) / WEIGHTS_NAME), metadata=metadata
        )

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, **kwargs) -> CtxAdapter:
        """Load an adapter from a folder or a Hub repository (``huggingface_hub``'s
        ``from_pretrained``; ``kwargs`` are its ``revision``, ``cache_dir``, ``token``...).

        Everything is checked before a weight is allocated (``ctxadapter.adapter_files``): the
        folder or repository id, ``config.json`` (a JSON object with the adapter's keys, of
        the right types and bounded sizes), the shapes and dtypes in the weights' header, and
        that the weights were saved with this config. Weights holding NaN or inf are refused.
        Every refusal names the file and the key."""
        model_id = str(pretrained_model_name_or_path)
        check_location(model_id)
        download = ("revision", "cache_dir", "force_download", "token", "local_files_only")
        read_config(model_id, **{k: kwargs[k] for k in download if k in kwargs})
        return super().from_pretrained(pretrained_model_name_or_path, **kwargs)

    @classmethod
    def _from_pretrained(
        cls,
        *,
        model_id: str,
        revision: str | None,
        cache_dir,
        force_download: bool,
        local_files_only: bool,
        token,
        config: dict | None = None,
        map_location: str = "cpu",
        **model_kwargs,
    ) -> CtxAdapter:
        if config is None:
            if os.path.isdir(model_id):
                weights_file(model_id)  # a folder of pickles only: say so, never load them
            raise FileNotFoundError(f"No {CONFIG_NAME} found for adapter {model_id!r}.")
        where = describe(model_id, CONFIG_NAME)
        check_config(config, where)
        # huggingface_hub passes the config's keys as model_kwargs too
        saved = {**AdapterConfig.SAVED_WITHOUT, **config, **model_kwargs}
        init = {k: v for k, v in saved.items() if k != VERSION_KEY}
        path = weights_file(
            model_id,
            revision=revision,
            cache_dir=cache_dir,
            force_download=force_download,
            local_files_only=local_files_only,
            token=token,
        )
        try:
            with torch.device("meta"):  # the shapes the config describes, allocating nothing
                expected = cls(**init).state_dict()
        except ValueError as error:  # a value of the right type but not a valid setting
            raise ValueError(f"{where}: {error}") from error
        check_weights(path, where, expected, config)
        try:
            state_dict = safetensors.torch.load_file(path, device=map_location)
        except (SafetensorError, OSError) as error:
            raise ValueError(
                f"Could not read adapter weights {path}: the file is corrupted or truncated "
                f"({error})."
            ) from error
        check_finite(state_dict, path)
        model = cls(**init)
        model.load_state_dict(state_dict, strict=True)
        return model.eval()

    def generate_model_card(self, *args, config: dict | None = None, **kwargs) -> ModelCard:
        """The model card written by ``save_pretrained``: ``ctxadapter.card.model_card`` of
        ``config`` (default: ``self.config``), ``model_card_kwargs`` of ``save_pretrained``
        its keyword arguments."""
        return model_card(self.config if config is None else config, **kwargs)
