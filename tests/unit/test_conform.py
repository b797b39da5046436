"""Feeding a graph whose fixed input sizes a pass changed (pruned key/value heads): each
side of a comparison gets a cache of its own sizes."""

from __future__ import annotations

import torch

from fxopt.engine.specs import InputSpec, conform

ORIGINAL = InputSpec("past", "float32", ("batch", 2, "past_sequence", 16))
PRUNED = InputSpec("past", "float32", ("batch", 1, "past_sequence", 16))
IDS = InputSpec("ids", "int64", ("batch", "sequence"))


def test_an_empty_cache_takes_the_graphs_sizes_both_ways():
    ids = torch.ones(3, 5, dtype=torch.long)
    batch = {"ids": ids, "past": torch.zeros(3, 2, 0, 16)}
    pruned = conform(batch, [IDS, PRUNED])
    assert pruned["past"].shape == (3, 1, 0, 16) and pruned["ids"] is ids
    assert conform(pruned, [IDS, ORIGINAL])["past"].shape == (3, 2, 0, 16)


def test_a_filled_cache_is_cut_to_the_smaller_graph_and_never_grown():
    past = torch.arange(3 * 2 * 4 * 16, dtype=torch.float32).reshape(3, 2, 4, 16)
    cut = conform({"past": past}, [PRUNED])["past"]
    assert cut.shape == (3, 1, 4, 16) and cut.is_contiguous()
    torch.testing.assert_close(cut, past[:, :1])
    assert conform({"past": cut}, [ORIGINAL])["past"] is cut  # nothing to grow it from


def test_inputs_that_fit_are_fed_as_they_are():
    past = torch.zeros(3, 2, 4, 16)
    assert conform({"past": past}, [ORIGINAL])["past"] is past
