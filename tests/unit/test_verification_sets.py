"""``[data.verification]``: one set as before, or named sets ``[data.verification.<name>]``."""

from __future__ import annotations

import pytest

from fxopt.engine.errors import DataError, RecipeError
from fxopt.run.plan import data_files
from fxopt.run.recipe import DataSplit, parse_recipe
from tests.data_splits import splits

ONE = {"source": "stdlib-docstrings", "samples": 4, "batch_size": 2}


def test_one_set_parses_and_dumps_as_before():
    recipe = parse_recipe({"data": {"verification": ONE}})
    assert isinstance(recipe.data.verification, DataSplit)
    assert recipe.data.verification_keys() == {"verification": "verification"}
    assert recipe.data.field("verification") == "data.verification"
    assert recipe.model_dump()["data"]["verification"] == DataSplit(**ONE).model_dump()
    default = parse_recipe({}).data
    assert list(default.splits()) == ["verification"] and default.verification.source == "synthetic"


def test_named_sets_keep_their_order_and_the_first_is_primary(tmp_path):
    (tmp_path / "t.txt").write_text("one\ntwo\n")
    sets = {"docs": ONE, "file": {"source": "text", "path": "t.txt"}}
    recipe = parse_recipe(
        {"data": {"calibration": ONE, "verification": sets}}, source=tmp_path / "r.toml"
    )
    data = recipe.data
    assert data.verification_keys() == {"docs": "verification", "file": "verification.file"}
    assert list(data.splits()) == ["calibration", "verification", "verification.file"]
    assert [data.field(k) for k in data.splits()] == [
        "data.calibration",
        "data.verification.docs",
        "data.verification.file",
    ]
    assert data_files(recipe) == [tmp_path / "t.txt"]  # hashed into the build key
    assert parse_recipe(recipe.model_dump()).data == data  # the dump reads back


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ({}, "data.verification: the table names no verification set and no source"),
        ({"docs": ONE, "2nd": ONE}, "data.verification: set name '2nd' is not a plain identifier"),
        ({"my-set": ONE}, "data.verification: set name 'my-set' is not a plain identifier"),
        ({"docs": ONE, "source": "text"}, "mixes a set's keys (source) with named sets (docs)"),
        ({"docs": {**ONE, "samples": 0}}, "data.verification.docs.samples: input should be"),
    ],
)
def test_bad_tables_name_the_field_and_the_fix(table, message):
    with pytest.raises(RecipeError) as info:
        parse_recipe({"data": {"verification": table}})
    assert message in str(info.value)
    if "samples" not in message:
        assert "[data.verification." in info.value.fix


def test_an_unknown_key_lists_the_allowed_ones_in_either_form():
    for table, field in (
        ({"sorce": "text"}, "data.verification.sorce"),
        ({"docs": {"sorce": "text"}}, "data.verification.docs.sorce"),
    ):
        with pytest.raises(RecipeError) as info:
            parse_recipe({"data": {"verification": table}})
        assert f"{field}: unknown key; allowed keys: source, path, samples" in str(info.value)


def test_sets_share_a_source_as_disjoint_slices(host, tmp_path):
    (tmp_path / "t.txt").write_text("\n".join(f"sentence {i}" for i in range(14)))
    text = {"source": "text", "path": "t.txt", "samples": 4, "batch_size": 2}
    got = splits(host, tmp_path, {"calibration": text, "verification": {"a": text, "b": text}})
    rows = [
        {tuple(r.tolist()) for b in got[k] for r in b["input_ids"]}
        for k in ("calibration", "verification", "verification.b")
    ]
    assert all(len(r) == 4 for r in rows) and not (rows[0] & rows[1] or rows[1] & rows[2])
    with pytest.raises(DataError) as info:  # 2 lines left for a fourth set of 4
        splits(
            host, tmp_path, {"calibration": text, "verification": {"a": text, "b": text, "c": text}}
        )
    assert info.value.field == "data.verification.c.samples"


def test_synthetic_sets_differ(host, tmp_path):
    synthetic = {"source": "synthetic", "samples": 4, "batch_size": 4}
    got = splits(host, tmp_path, {"verification": {"a": synthetic, "b": synthetic}})
    one = splits(host, tmp_path, {"verification": synthetic})
    a, b = got["verification"][0]["input_ids"], got["verification.b"][0]["input_ids"]
    assert not a.equal(b)
    assert a.equal(one["verification"][0]["input_ids"])  # the primary set: as one set was
