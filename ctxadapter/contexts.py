"""Contexts: which concepts are intervened on.

A *context* is the set of intervened concepts. The empty set is the observational context,
written ``"obs"`` (or ``[]``); ``"quad1"`` is a single intervention; ``"quad1+size"`` or
``["quad1", "size"]`` is a composition. Contexts are parsed and validated once, at the edge,
into a canonical form: a tuple of concept names in the order of the configured concept list.
That tuple is hashable and independent of the order in which the names were written.

Inside the model a batch of contexts is a boolean mask of shape ``(N, K)``: row ``n`` marks the
concepts intervened on in sample ``n``.
"""

from __future__ import annotations

import itertools
import unicodedata
from collections.abc import Sequence

import torch

OBSERVATIONAL = "obs"
"""The reserved name of the observational context (no concept intervened on)."""

Context = tuple[str, ...]
"""A canonical context: concept names in configured order; ``()`` is observational."""


class ContextTypeError(TypeError, ValueError):
    """A context that is neither a string nor a list, tuple or set of names.

    Both a ``TypeError`` and a ``ValueError``: every other malformed context is a ``ValueError``,
    so ``except ValueError`` catches all of them."""


def _invalid(value, concepts: Sequence[str], why: str, error: type = ValueError) -> ValueError:
    valid = ", ".join(repr(c) for c in concepts)
    return error(
        f"Invalid context {value!r}: {why}. A context is {OBSERVATIONAL!r}, a concept name, or "
        f"several names joined by '+' (or given as a list); valid concepts are: {valid}."
    )


def parse_context(
    context: str | Sequence[str] | frozenset[str],
    concepts: Sequence[str],
    *,
    lenient: bool = False,
) -> Context:
    """Validate one context and return its canonical form.

    Args:
        context: ``"obs"``, ``[]``, a concept name, ``"a+b"``, or a list/tuple/set of names.
        concepts: the configured concept names, in order.
        lenient: also accept spaces around the names (``" a + b "``), the empty string for the
            observational context and a name given twice (read once). The built-in datasets'
            samplers (``ctxadapter.data.quad``) parse this way; training data is parsed strictly.
            Either way names are compared in Unicode NFC form (a name typed with a combining
            accent is the concept written with the precomposed one).

    Returns:
        The intervened concept names as a tuple ordered like ``concepts``; ``()`` for ``"obs"``.

    Raises:
        ValueError: for unknown names, ``obs`` mixed with concepts, duplicates, empty strings or
            non-string values. The message names the bad value and lists the valid concepts.
            A context of another type than a string or a list, tuple or set raises a
            ``ContextTypeError``, both a ``TypeError`` and a ``ValueError``.
    """
    if isinstance(context, str):
        text = context.strip() if lenient else context
        if text == OBSERVATIONAL or (lenient and not text):
            return ()
        names = text.split("+")
    elif isinstance(context, (list, tuple, frozenset, set)):
        names = list(context)
    else:
        raise _invalid(
            context,
            concepts,
            f"expected a string or a list of strings, got {type(context).__name__}",
            ContextTypeError,
        )
    for name in names:
        if not isinstance(name, str):
            raise _invalid(context, concepts, f"{name!r} is not a string")
    names = [unicodedata.normalize("NFC", name) for name in names]
    if lenient:
        names = [name.strip() for name in names]
    for name in names:
        if not name.strip():
            raise _invalid(context, concepts, "it contains an empty name ''")
    if names == [OBSERVATIONAL]:
        return ()
    if OBSERVATIONAL in names:
        raise _invalid(context, concepts, f"{OBSERVATIONAL!r} cannot be combined with concepts")
    normal = [unicodedata.normalize("NFC", c) for c in concepts]  # names compare in NFC
    unknown = [name for name in names if name not in normal]
    if unknown:
        near = [c for c in [*concepts, OBSERVATIONAL] if c.casefold() == unknown[0].casefold()]
        hint = f" (it differs only by case from {near[0]!r})" if near else ""
        raise _invalid(context, concepts, f"unknown concept {unknown[0]!r}{hint}")
    if len(set(names)) != len(names) and not lenient:
        duplicate = next(name for name in names if names.count(name) > 1)
        raise _invalid(context, concepts, f"concept {duplicate!r} appears twice")
    return tuple(c for c, n in zip(concepts, normal, strict=True) if n in names)


def context_name(context: Context) -> str:
    """The display form of a canonical context: ``"obs"`` or names joined by ``"+"``."""
    return "+".join(context) if context else OBSERVATIONAL


def context_mask(
    contexts: str | Sequence | torch.Tensor,
    concepts: Sequence[str],
    batch_size: int,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Turn the contexts of a batch into a boolean intervention mask.

    Args:
        contexts: one context for the whole batch (a string such as ``"obs"`` or
            ``"quad1+size"``, or a tuple of names), a list with one context per sample, or an
            already-built mask ``(batch_size, K)`` of booleans (passed through after a check).
        concepts: the configured concept names ``(K,)``.
        batch_size: ``N``, the number of samples.
        device: where to put the mask.

    Returns:
        A bool tensor ``(N, K)``; entry ``(n, k)`` is true if concept ``k`` is intervened on in
        sample ``n``.

    A ``list`` is always read as one context per sample, so a composition for the whole batch is
    written ``"quad1+size"`` (or as a tuple).
    """
    num_concepts = len(concepts)
    if isinstance(contexts, torch.Tensor):
        if contexts.shape != (batch_size, num_concepts):
            raise ValueError(
                f"A context mask must have shape (batch_size, num_concepts) = "
                f"{(batch_size, num_concepts)}, got {tuple(contexts.shape)}."
            )
        return contexts.to(device=device, dtype=torch.bool)
    index = {name: k for k, name in enumerate(concepts)}
    if isinstance(contexts, list):
        if len(contexts) != batch_size:
            raise ValueError(
                f"Got {len(contexts)} contexts for a batch of {batch_size}: pass one context for "
                f"the whole batch (a string such as 'quad1+size') or a list with one per sample."
            )
        # Parse each distinct context once, then build the rows from a small table.
        distinct: dict = {}
        rows = []
        for context in contexts:
            key = tuple(context) if isinstance(context, list) else context
            if key not in distinct:
                distinct[key] = len(distinct)
            rows.append(distinct[key])
        table = torch.zeros(len(distinct), num_concepts, dtype=torch.bool)
        for key, row in distinct.items():
            for name in parse_context(key, concepts):
                table[row, index[name]] = True
        return table[torch.tensor(rows, dtype=torch.long)].to(device)
    mask = torch.zeros(batch_size, num_concepts, dtype=torch.bool, device=device)
    for name in parse_context(contexts, concepts):
        mask[:, index[name]] = True
    return mask


def all_pairs(concepts: Sequence[str]) -> list[str]:
    """Every composition of two concepts, ``"a+b"``, in concept order:
    ``["a", "b", "c"]`` -> ``["a+b", "a+c", "b+c"]``."""
    return [f"{a}+{b}" for a, b in itertools.combinations(concepts, 2)]


def is_composition(context: str) -> bool:
    """Whether a context name intervenes on two or more concepts (``"a+b"``).

    ``"obs"`` (or ``""``) and a single concept name are single contexts. Only the name is read:
    no concept list is needed.
    """
    names = [part for part in context.split("+") if part.strip() and part.strip() != "obs"]
    return len(names) >= 2


def distinct_contexts(mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The distinct rows of a ``(N, K)`` context mask: ``(distinct, inverse, counts)`` as
    ``torch.unique(mask, dim=0, return_inverse=True, return_counts=True)`` returns them, up to
    the order of the distinct rows.

    ``distinct`` is ``(U, K)`` bool, ``inverse`` ``(N,)`` the index of each row's context in
    ``distinct`` (``distinct[inverse]`` is ``mask``), ``counts`` ``(U,)`` the rows of each. Each
    row is read as the integer whose bit ``k`` is column ``k`` and the integers are made unique:
    on the CPU ``torch.unique`` over rows compares them one by one and cost a fifth of a
    training step at batch 512. Masks of more than 62 concepts fall back to it.
    """
    k = mask.shape[1]
    if k > 62:
        return torch.unique(mask, dim=0, return_inverse=True, return_counts=True)
    bits = torch.arange(k, device=mask.device)
    codes = (mask.long() << bits).sum(dim=1)
    values, inverse, counts = torch.unique(codes, return_inverse=True, return_counts=True)
    distinct = (values.unsqueeze(1) >> bits) & 1
    return distinct.bool(), inverse, counts
