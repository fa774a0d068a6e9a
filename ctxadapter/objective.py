"""The training objective: one object for training, validation (early stopping) and refits.

Per sample, for a batch of latents ``e`` with their contexts::

    loss = reconstruction NLL (of z ~ q(z | e), and of its mean when the rows below are decoded)
         + beta * KL(q(z | e) || N(0, I))
         + sample_matching * [SW2(counterfactuals under each context, its latents)
                              + SW2(prior samples of each context, its latents)]
         + prior_matching * SW2(that context's posterior samples, N(0, I) samples)
         + covariance_matching * [the same pairs as sample_matching, compared by covariance]
         + edit_order * [1 - corr(before, after) along each edit's mean move]
         + causal penalty

- ``reconstruction="latent"``: the Gaussian NLL of the frozen encoder's model-space latent
  ``e`` given the adapter's ``e_hat``, with a learned scale, summed over latent entries. It
  needs no autoencoder pass, so it trains on cached latents.
- ``reconstruction="pixel"``: decode ``e_hat`` with the frozen decoder and take the Bernoulli
  NLL (binary cross-entropy summed over pixels and channels, images in ``[0, 1]``), as in the
  paper.
- Either NLL is of the decoding of a posterior sample ``z`` (the ELBO's). When the rows of
  ``sample_matching`` are decoded (any of its three terms on), the decoding of the posterior
  *mean* is reconstructed as well and the term is the average of the two NLLs: the mean is
  what ``ContextAutoencoder.reconstruct`` and every edit decode, and the counterfactual rows
  below decode means, so the context layers must render a mean as well as a sample
  (``docs/results.md``).
- ``sample_matching`` (ctxadapter's, not in the paper): trains the context layers for the two
  uses the ELBO leaves out. The ELBO trains them only to reconstruct each image under its own
  context; generation decodes ``z ~ N(0, I)`` under every context, and a counterfactual edit
  decodes the noise of a real image under another context. So every row of the batch is also
  decoded under its own context from a prior draw and from the posterior mean of another
  row (a random permutation of the batch: a counterfactual of a real image, decoded from the
  noise ``ContextAutoencoder.counterfactual`` keeps), and within each
  context each kind is compared with the batch's real latents of that context by the squared
  sliced Wasserstein-2 distance along ``num_projections`` random directions (per latent entry,
  summed over entries, so that it is on the scale of the reconstruction term); the term is the
  sum of the two distances. Both halves are needed: a real image's posterior is informative
  in only a few of each concept's noise dimensions, where a prior draw fills all of them, so
  prior draws alone do not train the context layers on the noise an edit keeps
  (``docs/results.md``).
- ``prior_matching`` (ctxadapter's, not in the paper): within each context of the batch, the
  posterior samples ``z`` the reconstruction decodes are compared with as many ``N(0, I)``
  draws by the same kind of sliced-Wasserstein distance (in the noise space, summed over its
  entries). The KL term pulls each image's posterior towards the prior; this term pulls each
  context's *pooled* posterior there, so that the noise of the images of one context is
  distributed as the noise generation draws for that context, and what tells the contexts
  apart has to be carried by the context layers.
- ``covariance_matching`` (ctxadapter's, not in the paper): the same two kinds of rows as
  ``sample_matching``, compared within each context with the batch's real latents by the
  squared Frobenius distance of their covariance matrices (``grouped_covariance_distance``).
  The sliced distance compares the distributions along a few random directions of the whole
  latent, which says little about how one part of an image varies with another; the
  covariance holds every such pair. Under an intervention on a concept, its region of the
  image no longer varies with its causes: the covariance term penalises a latent head that
  paints that region from the causes' blocks, which pushes the effects between concepts into
  the causal layer (``docs/results.md``).
- ``edit_order`` (ctxadapter's, not in the paper): the counterfactual rows of
  ``sample_matching`` are edits of real images: row ``n`` decodes the posterior mean of row
  ``m`` under row ``n``'s context. For each pair (context of ``m``, context of ``n``), the
  term reads where each image sits along the pair's mean move before the edit (row ``m``'s
  reconstruction from the same mean) and after it, and penalises ``1 - `` their correlation
  (``grouped_edit_order``). The distribution terms accept any map from one context's images
  to another's, a fold included: one that sends the lowest images of a concept to the top
  and the top ones to the bottom matches the distribution as well as a shift does. A true
  counterfactual keeps each image's rank along the concept it changes; this term asks for
  that, and needs no labels (``docs/results.md``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar, Literal

import torch
from torch import Tensor, nn

from .config import Settings
from .contexts import distinct_contexts
from .evaluation.wasserstein import grouped_sliced_wasserstein
from .images import signed_to_unit

RECONSTRUCTIONS = ("latent", "pixel")

PIXEL_EPS = 1e-4
"""Decoded pixels are clamped to ``[eps, 1 - eps]`` before the Bernoulli likelihood."""


def gaussian_kl(mean: Tensor, logvar: Tensor) -> Tensor:
    """``KL(N(mean, exp(logvar)) || N(0, I))`` per sample: ``(N, D)`` -> ``(N,)`` nats."""
    return 0.5 * (mean.pow(2) + logvar.exp() - 1 - logvar).sum(dim=1)


def grouped_covariance_distance(real: Tensor, fake: Tensor, groups: Tensor) -> Tensor:
    """``||Cov(real) - Cov(fake)||_F^2 / D`` within each group of rows, averaged over the
    groups weighted by their sizes.

    Row ``n`` of ``fake`` belongs to the same group as row ``n`` of ``real``. Each side is
    centred on its group's mean, and the squared norms leave out the terms of a row with
    itself, so two sets of independent draws from one distribution score 0 on average
    (the estimate can be slightly negative). Computed from the groups' ``n x n`` Gram
    matrices in one batched product (the groups padded to the largest), never a ``D x D``
    covariance.

    Args:
        real, fake: ``(N, D)``.
        groups: ``(N,)`` integer group of each row (e.g. the index of its context).

    Returns:
        A scalar; groups of one row add nothing.
    """
    _, inverse, counts = torch.unique(groups, return_inverse=True, return_counts=True)
    order = inverse.argsort(stable=True)
    starts = torch.cumsum(counts, 0) - counts
    slot = torch.arange(len(groups), device=groups.device) - starts[inverse[order]]
    where = (inverse[order], slot)
    shape = (len(counts), int(counts.max()), real.shape[1])
    padded = torch.stack([x.new_zeros(shape).index_put(where, x[order]) for x in (real, fake)])
    n = counts.to(real.dtype)
    filled = (torch.arange(padded.shape[2], device=groups.device) < counts[:, None]).to(real.dtype)
    centred = (padded - padded.sum(dim=2, keepdim=True) / n[:, None, None]) * filled[..., None]
    a, b = centred
    gram_a, gram_b, cross = a @ a.mT, b @ b.mT, a @ b.mT
    own = gram_a.pow(2).sum(dim=(1, 2)) - gram_a.diagonal(dim1=1, dim2=2).pow(2).sum(dim=1)
    own = own + gram_b.pow(2).sum(dim=(1, 2)) - gram_b.diagonal(dim1=1, dim2=2).pow(2).sum(dim=1)
    per_group = n * (own / (n * (n - 1)).clamp(min=1) - 2 * cross.pow(2).sum(dim=(1, 2)) / n**2)
    return torch.where(counts > 1, per_group, 0).sum() / (len(groups) * real.shape[1])


def grouped_edit_order(before: Tensor, after: Tensor, sources: Tensor, targets: Tensor) -> Tensor:
    """How far edits fold the order of the rows they move: ``1 - corr(p, q)`` per pair of
    groups, averaged over the pairs.

    Rows with the same (source group, target group) form a pair of groups, for example the
    images of one context edited into another. Within a pair, ``u`` is the unit vector of the
    mean move ``mean(after - before)``; ``p = before @ u`` and ``q = after @ u`` are where each
    row sits along that move before and after the edit, and ``corr`` is their Pearson
    correlation. A shift or a stretch of the rows along ``u`` keeps their order (score 0);
    an edit that sends the low rows high and the high rows low reverses it (up to 2). Pairs
    with fewer than 4 rows or with ``source == target`` (nothing was edited) add nothing.
    Every pair in one set of scatter sums, no loop.

    Args:
        before, after: ``(N, D)`` rows before and after the edit.
        sources, targets: ``(N,)`` integer groups of each row before and after.

    Returns:
        A scalar (0 when no pair counts).
    """
    _, key, counts = torch.unique(
        sources * (int(torch.maximum(sources, targets).max()) + 1) + targets,
        return_inverse=True,
        return_counts=True,
    )
    n = counts.to(before.dtype)

    def per_pair_sum(values: Tensor) -> Tensor:
        return values.new_zeros(len(counts), *values.shape[1:]).index_add(0, key, values)

    move = per_pair_sum(after - before)
    move = move * move.pow(2).sum(dim=1, keepdim=True).clamp(min=1e-12).rsqrt()
    p = (before * move[key]).sum(dim=1)
    q = (after * move[key]).sum(dim=1)
    p = p - (per_pair_sum(p) / n)[key]
    q = q - (per_pair_sum(q) / n)[key]
    spread = (per_pair_sum(p * p) * per_pair_sum(q * q)).clamp(min=1e-12).sqrt()
    corr = per_pair_sum(p * q) / spread
    edited = per_pair_sum((sources != targets).to(before.dtype)) > 0
    counted = edited & (counts >= 4)
    return torch.where(counted, 1 - corr, 0).sum() / counted.sum().clamp(min=1)


@dataclass(frozen=True)
class Objective(Settings):
    """The loss of a ``ContextAutoencoder``: what training minimises and validation reports.

    ``Objective()`` is the loss ``examples/finetune.py`` trains with by default;
    ``Objective.paper()`` the paper's (the Bernoulli pixel loss and the KL term, nothing
    else). Its fields are checked on construction and can be set from a JSON file with
    ``--objective_config`` (``ctxadapter.config``).

    Args:
        reconstruction: ``"latent"`` (cached latents, fast) or ``"pixel"`` (through the frozen
            decoder; the paper's).
        beta: weight of the KL term (the paper: 1).
        sample_matching: weight of the per-context sliced-Wasserstein term (0: the paper's
            objective).
        num_projections: random directions of that term (and of ``prior_matching``) per batch.
        prior_matching: weight of the per-context sliced-Wasserstein term between the
            posterior samples and the prior (0: the paper's objective).
        covariance_matching: weight of the per-context covariance term between the rows of
            ``sample_matching`` and the real latents (0: the paper's objective).
        edit_order: weight of the term that keeps each edited image's rank along the edit's
            move (0: the paper's objective).
        group_sparsity: weight of ``sum_{i != j} ||W[i, j]||_F`` of each row's effective causal
            weight (0: the paper's objective).
        l2: weight of ``||W||_F``.
    """

    reconstruction: Literal[RECONSTRUCTIONS] = "latent"
    beta: float = 1.0
    sample_matching: float = 4.0
    num_projections: int = 64
    prior_matching: float = 4.0
    covariance_matching: float = 8.0
    edit_order: float = 30.0
    group_sparsity: float = 0.0
    l2: float = 0.0

    PRESETS: ClassVar[dict[str, dict]] = {
        "paper": dict(
            reconstruction="pixel",
            sample_matching=0.0,
            prior_matching=0.0,
            covariance_matching=0.0,
            edit_order=0.0,
        ),
    }

    def __call__(
        self,
        model,
        contexts,
        latents: Tensor | None = None,
        pixel_values: Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> dict[str, Tensor]:
        """The loss of ``model`` (a ``ContextAutoencoder``) on one batch.

        Call it through ``model(contexts, ..., objective=self)`` inside a distributed wrapper.

        Args:
            contexts: one context for the batch or one per sample (see
                ``ctxadapter.contexts.context_mask``).
            latents: cached model-space latents ``(N, C, h, w)`` (skips the encoder).
            pixel_values: images ``(N, 3, H, W)`` in ``[-1, 1]``; needed for ``pixel`` loss, or
                to encode when ``latents`` is not given.
            generator: the noise of the posterior samples, the prior samples and the
                directions.

        Returns:
            ``loss`` (the scalar to minimise) and its unweighted parts, each a batch mean:
            ``reconstruction`` and ``kl`` (nats per sample), ``sample_matching``,
            ``prior_matching``, ``covariance_matching`` and ``edit_order`` (each 0 when its
            weight is 0) and ``causal_penalty`` (already weighted).
        """
        if latents is None:
            if pixel_values is None:
                raise ValueError("Pass pixel_values (images in [-1, 1]) or cached latents.")
            latents = model.codec.encode(pixel_values)
        if self.reconstruction == "pixel" and pixel_values is None:
            raise ValueError("reconstruction='pixel' needs pixel_values, the target images.")
        adapter = model.adapter
        mask = adapter.context_mask(contexts, latents.shape[0])
        # Sample matching: every row is also decoded under its own context from its posterior
        # mean, a prior draw and another row's posterior mean, in the same pass as its own.
        decodes_others = bool(self.sample_matching or self.covariance_matching or self.edit_order)
        out = adapter(latents, mask, generator=generator, sample_matching=decodes_others)
        target = latents.to(out.latents.dtype)
        # Reconstruction: of the posterior sample (the ELBO's) and, when the other rows are
        # decoded, of the posterior mean too (what reconstructions and edits decode).
        recon = self._reconstruction_nll(model, out.latents, target, pixel_values)
        if out.mean_latents is not None:
            of_mean = self._reconstruction_nll(model, out.mean_latents, target, pixel_values)
            recon = (recon + of_mean) / 2
        kl = gaussian_kl(out.mean, out.logvar).mean()
        groups = distinct_contexts(mask)[1]
        matching = prior = covariance = edit_order = recon.new_zeros(())
        real = target.flatten(1)
        if self.sample_matching:
            matching = self._matched_distance(
                real, out.counterfactuals.flatten(1), groups, generator
            ) + self._matched_distance(real, out.generated.flatten(1), groups, generator)
        if self.covariance_matching:
            covariance = grouped_covariance_distance(
                real, out.counterfactuals.flatten(1), groups
            ) + grouped_covariance_distance(real, out.generated.flatten(1), groups)
        if self.prior_matching:
            noise = adapter.sample_noise(latents.shape[0], generator=generator)
            prior = self._matched_distance(out.noise, noise, groups, generator)
        if self.edit_order:
            sources = out.sources
            edit_order = grouped_edit_order(
                out.mean_latents[sources].flatten(1),
                out.counterfactuals.flatten(1),
                groups[sources],
                groups,
            )
        penalty = adapter.causal_penalty(mask, group_sparsity=self.group_sparsity, l2=self.l2)
        loss = recon + self.beta * kl + penalty
        loss = loss + self.sample_matching * matching + self.prior_matching * prior
        loss = loss + self.covariance_matching * covariance + self.edit_order * edit_order
        return dict(
            loss=loss,
            reconstruction=recon,
            kl=kl,
            sample_matching=matching,
            prior_matching=prior,
            covariance_matching=covariance,
            edit_order=edit_order,
            causal_penalty=penalty,
        )

    def _reconstruction_nll(
        self, model, decoded: Tensor, target: Tensor, pixel_values: Tensor | None
    ) -> Tensor:
        """The batch mean of the NLL (nats per sample) of ``target`` latents ``(N, C, h, w)``
        (or of ``pixel_values``, with ``reconstruction="pixel"``) given ``decoded`` latents."""
        if self.reconstruction == "latent":
            log_scale = model.adapter.latent_log_scale
            error = ((target - decoded) * torch.exp(-log_scale)).pow(2)
            nll = 0.5 * error.flatten(1).sum(dim=1)
            nll = nll + error[0].numel() * (log_scale + 0.5 * math.log(2 * math.pi))
            return nll.mean()
        probs = signed_to_unit(model.codec.decode(decoded)).clamp(PIXEL_EPS, 1 - PIXEL_EPS)
        target_pixels = signed_to_unit(pixel_values.to(probs))
        nll = nn.functional.binary_cross_entropy(probs, target_pixels, reduction="none")
        return nll.flatten(1).sum(dim=1).mean()

    def _matched_distance(
        self, real: Tensor, fake: Tensor, groups: Tensor, generator: torch.Generator | None
    ) -> Tensor:
        """``grouped_sliced_wasserstein`` of ``(N, D)`` rows along ``num_projections`` fresh
        random unit directions, per entry times ``D`` (summed over entries, on the scale of
        the reconstruction term)."""
        directions = torch.randn(
            real.shape[1],
            self.num_projections,
            generator=generator,
            device=real.device,
            dtype=real.dtype,
        )
        directions = directions / directions.norm(dim=0)
        return grouped_sliced_wasserstein(real, fake, groups, directions) * real.shape[1]
