"""The text domains (python-reference, library-docstrings, package-readmes, text-mix):
deterministic, disjoint where a recipe mixes them, non-empty, prose."""

from __future__ import annotations

import pytest

from fxopt.plugins.data import text_domains as td
from fxopt.plugins.data.sources import split_sentences, stdlib_sentences
from tests.data_splits import splits

MARKUP = """\
Project
=======

[![badge](https://img.shields.io/x.svg)](https://example.org)

The **project** makes [fast models](https://example.org/docs) for `everyone` who needs them.
It is small. Read :func:`the guide <guide>` before you start.

```python
Model = load("This looks like a sentence but is code.")
```

Install it like this:

    Pip install the package with the command you would expect.

* Each bullet point is a sentence of its own here.
  It may wrap onto a second line as well.

| Table | Cells are not prose at all here |
>>> Print("a prompt is not prose either, whatever it says.")
See https://example.org for the details of the license and more.
"""


def test_prose_sentences_leave_markup_code_and_tables_out():
    assert td.prose_sentences(MARKUP) == [
        "The project makes fast models for everyone who needs them.",
        "Read the guide before you start.",
        "Each bullet point is a sentence of its own here.",
        "It may wrap onto a second line as well.",
    ]


def test_is_prose():
    assert td.is_prose("A sentence of plain words says what it means.")
    assert not td.is_prose("Too short to count.")
    assert not td.is_prose("lowercase start is not how a sentence of prose begins.")
    assert not td.is_prose("No end mark means that this is not a whole sentence")
    assert not td.is_prose("The value of x = 3 makes this code rather than prose.")
    assert not td.is_prose("Numbers 1 2 3 4 5 6 7 8 9 10 are not plain words, mostly.")


CORPORA = {
    "python-reference": td.python_reference_corpus,
    "library-docstrings": td.library_docstring_corpus,
    "package-readmes": td.package_readme_corpus,
}


@pytest.mark.parametrize("name", sorted(CORPORA))
def test_each_domain_is_deterministic_non_empty_prose(name):
    corpus = CORPORA[name]()
    # recipes/minilm-prune.toml verifies on 256 package-readmes sentences
    assert len(corpus) >= (256 if name == "package-readmes" else 1000)
    assert len(set(corpus)) == len(corpus)
    assert all(td.is_prose(s) for s in corpus)
    if name != "library-docstrings":  # (the slow one: it reads every torch docstring)
        CORPORA[name].cache_clear()
        assert CORPORA[name]() == corpus  # the same order again: sorted, then a seeded shuffle


def test_domains_leave_out_what_stdlib_docstrings_serves():
    held_out = {s for p in stdlib_sentences() for s in (p, *split_sentences(p))}
    for corpus in CORPORA.values():
        assert not held_out & set(corpus())


def test_text_mix_interleaves_and_keeps_out_of_the_held_out_sets():
    from fxopt.plugins.data.sources import stdlib_sentence_corpus

    mix = td.text_mix_corpus()
    assert len(set(mix)) == len(mix) > len(stdlib_sentence_corpus())
    domains = [
        set(stdlib_sentence_corpus()),
        set(td.python_reference_corpus()),
        set(td.library_docstring_corpus()),
    ]
    # one of each domain in turn, so a short fine-tune sees all three
    assert [next(i for i, d in enumerate(domains) if s in d) for s in mix[:6]] == [0, 1, 2] * 2
    assert not set(mix) & set(td.package_readme_corpus())  # off-domain: in no mix
    assert not set(mix) & set(td.python_reference_corpus()[: td.HELD_OUT])
    assert not set(mix) & set(td.library_docstring_corpus()[: td.HELD_OUT])


def test_a_recipe_fine_tunes_on_the_mix_and_verifies_on_held_out_domains(host, tmp_path):
    sets = {
        "docstrings": {"source": "stdlib-docstrings", "samples": 256, "batch_size": 64},
        "reference": {"source": "python-reference", "samples": td.HELD_OUT, "batch_size": 64},
        "library": {"source": "library-docstrings", "samples": td.HELD_OUT, "batch_size": 64},
        "readmes": {"source": "package-readmes", "samples": 256, "batch_size": 64},
    }
    got = splits(
        host,
        tmp_path,
        {
            "calibration": {"source": "stdlib-docstrings", "samples": 128, "batch_size": 64},
            "finetune": {"source": "text-mix", "samples": 6000, "batch_size": 100},
            "verification": sets,
        },
    )  # build_splits refuses any sample two of them share
    assert list(got) == [
        "calibration",
        "finetune",
        "verification",
        "verification.reference",
        "verification.library",
        "verification.readmes",
    ]
    assert sum(len(b["input_ids"]) for b in got["verification.readmes"]) == 256
