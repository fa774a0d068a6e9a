import pytest
import torch

from ctxadapter.contexts import (
    ContextTypeError,
    all_pairs,
    context_mask,
    context_name,
    distinct_contexts,
    is_composition,
    parse_context,
)

CONCEPTS = ["quad1", "quad2", "size"]


@pytest.mark.parametrize(
    "context, expected",
    [
        ("obs", ()),
        ([], ()),
        (["obs"], ()),
        ("quad1", ("quad1",)),
        (["quad1", "size"], ("quad1", "size")),
        ("quad1+size", ("quad1", "size")),
        ("size+quad1", ("quad1", "size")),
        (("size", "quad2"), ("quad2", "size")),
        ({"size", "quad1"}, ("quad1", "size")),
    ],
)
def test_parse_context_canonical(context, expected):
    parsed = parse_context(context, CONCEPTS)
    assert parsed == expected
    assert hash(parsed) == hash(expected)


@pytest.mark.parametrize(
    "context, named",
    [
        ("colour", "'colour'"),
        ("quad1+nope", "'nope'"),
        ("obs+quad1", "'obs'"),
        (["obs", "quad1"], "'obs'"),
        ("quad1+quad1", "'quad1'"),
        ("", "empty"),
        ("quad1+", "empty"),
        (["quad1", 3], "3"),
        (7, "int"),
        (None, "NoneType"),
    ],
)
def test_parse_context_errors_name_the_value_and_list_concepts(context, named):
    with pytest.raises(ValueError) as info:
        parse_context(context, CONCEPTS)
    message = str(info.value)
    assert named in message
    assert repr(context) in message
    assert "'quad1', 'quad2', 'size'" in message


@pytest.mark.parametrize(
    "context, expected",
    [
        (" size + quad1 ", ("quad1", "size")),
        ("", ()),
        ("  obs ", ()),
        ("quad1+quad1", ("quad1",)),
        ([" quad2", "quad1 "], ("quad1", "quad2")),
    ],
)
def test_parse_context_lenient(context, expected):
    assert parse_context(context, CONCEPTS, lenient=True) == expected


@pytest.mark.parametrize("context", ["quad1++size", "Obs", "obs+quad1", ["quad1", 3]])
def test_parse_context_lenient_still_rejects(context):
    with pytest.raises(ValueError, match="'quad1', 'quad2', 'size'"):
        parse_context(context, CONCEPTS, lenient=True)


@pytest.mark.parametrize("lenient", [False, True])
def test_parse_context_wrong_type_is_a_type_and_a_value_error(lenient):
    with pytest.raises(ContextTypeError) as info:
        parse_context(3, CONCEPTS, lenient=lenient)
    assert isinstance(info.value, TypeError) and isinstance(info.value, ValueError)


def test_all_pairs():
    assert all_pairs(["a", "b", "c"]) == ["a+b", "a+c", "b+c"]
    assert all_pairs(["a"]) == []


def test_is_composition() -> None:
    assert not is_composition("obs")
    assert not is_composition("")
    assert not is_composition("quad1")
    assert is_composition("quad1+size")
    assert is_composition("a+b+c")


def test_context_name_round_trip():
    assert context_name(()) == "obs"
    assert context_name(("quad1", "size")) == "quad1+size"
    assert parse_context(context_name(("quad2", "size")), CONCEPTS) == ("quad2", "size")


def test_context_mask_single_context_for_the_batch():
    mask = context_mask("size+quad1", CONCEPTS, batch_size=3)
    assert mask.dtype == torch.bool
    assert mask.tolist() == [[True, False, True]] * 3
    assert context_mask(("quad2",), CONCEPTS, 2).tolist() == [[False, True, False]] * 2
    assert not context_mask("obs", CONCEPTS, 2).any()


def test_context_mask_one_per_sample():
    mask = context_mask(["obs", "quad2", ["quad1", "size"], "quad2"], CONCEPTS, 4)
    assert mask.tolist() == [
        [False, False, False],
        [False, True, False],
        [True, False, True],
        [False, True, False],
    ]


def test_context_mask_errors():
    with pytest.raises(ValueError, match="Got 2 contexts for a batch of 3"):
        context_mask(["quad1", "size"], CONCEPTS, 3)
    with pytest.raises(ValueError, match=r"\(2, 3\), got \(2, 2\)"):
        context_mask(torch.zeros(2, 2, dtype=torch.bool), CONCEPTS, 2)
    with pytest.raises(ValueError, match="'bad'"):
        context_mask(["obs", "bad"], CONCEPTS, 2)


def test_context_mask_passes_masks_through():
    given = torch.tensor([[1, 0, 0], [0, 1, 1]], dtype=torch.uint8)
    assert context_mask(given, CONCEPTS, 2).tolist() == [[True, False, False], [False, True, True]]


def test_distinct_contexts_by_hand():
    """Rows [obs, a, a+c, obs, a]: three contexts; bit k of a row's code is column k, so the
    distinct rows come out in the order obs (0), a (1), a+c (5)."""
    mask = torch.tensor([[0, 0, 0], [1, 0, 0], [1, 0, 1], [0, 0, 0], [1, 0, 0]], dtype=torch.bool)
    distinct, inverse, counts = distinct_contexts(mask)
    assert distinct.tolist() == [[False] * 3, [True, False, False], [True, False, True]]
    assert inverse.tolist() == [0, 1, 2, 0, 1]
    assert counts.tolist() == [2, 2, 1]


@pytest.mark.parametrize("k", [5, 63, 70])
def test_distinct_contexts_matches_torch_unique_over_rows(k):
    """The same rows, groups and counts as ``torch.unique(mask, dim=0)``, up to the order of
    the distinct rows; above 62 concepts (no room in an int64 code) it is that function."""
    generator = torch.Generator().manual_seed(k)
    mask = torch.rand(40, k, generator=generator) < 0.1
    mask[::3] = mask[0]  # repeated rows
    distinct, inverse, counts = distinct_contexts(mask)
    assert torch.equal(distinct[inverse], mask)
    assert torch.equal(counts, torch.bincount(inverse, minlength=len(distinct)))
    expected = torch.unique(mask, dim=0)
    assert sorted(map(tuple, distinct.tolist())) == sorted(map(tuple, expected.tolist()))
