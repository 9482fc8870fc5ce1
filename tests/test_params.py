"""pipeline/params.merge_params: the one recursive overlay of params dicts."""

import copy
import datetime

import pytest

from clapart_core.pipeline.params import merge_params, phase_params


def test_overlay_wins_lists_are_replaced_none_is_kept_inputs_untouched():
    base = {"data": {"root": "a", "demo": {"n_clips": 10, "splits": [0.8, 0.1, 0.1]}}, "seed": 1, "day": datetime.date(2024, 1, 1)}
    overlay = {"data": {"demo": {"splits": [1.0]}, "root": None}, "train": {"epochs": 2}}
    before = copy.deepcopy((base, overlay))
    merged = merge_params(base, overlay)
    assert merged == {
        "data": {"root": None, "demo": {"n_clips": 10, "splits": [1.0]}},
        "seed": 1,
        "day": datetime.date(2024, 1, 1),
        "train": {"epochs": 2},
    }
    assert list(merged) == ["data", "seed", "day", "train"]  # base's order, new keys after
    assert (base, overlay) == before
    merged["data"]["demo"]["splits"].append(0.0)  # plain, unshared containers
    assert type(merged["data"]) is dict and base["data"]["demo"]["splits"] == [0.8, 0.1, 0.1]
    assert merge_params({"a": {"b": 1}}, {"a": 5}) == {"a": 5} and merge_params({"a": 5}, None) == {"a": 5}


def test_mapping_over_list_is_a_one_line_value_error():
    with pytest.raises(ValueError, match="cannot overlay"):
        merge_params({"a": [1]}, {"a": {"b": 1}})


def test_phase_params_overlays_the_finetune_entry():
    params = {"data": {"source": "demo", "root": "x"}, "train": {"lr": 1.0}, "finetune": {"ft": {"data": {"root": "y"}, "train": {}}}}
    assert phase_params(params, "ft")["data"] == {"source": "demo", "root": "y"}
    assert phase_params(params, "ft")["train"] == {"lr": 1.0}
