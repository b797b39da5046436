"""fxopt.testing: the conformance kit plugin authors run in their own test suites.

    from fxopt.testing import assert_conformant

    def test_my_pass_conforms():
        assert_conformant(MyPass, {"threshold": 0.1})

It checks what the engine relies on: a dotted, namespaced name; a ``Config`` that refuses
unknown keys and round-trips through TOML; a ``run`` that returns a ``PassResult`` declaring
what it preserves, keeps the graph's inputs, passes graph lint, and leaves a graph that still
runs and returns outputs of the same count and shapes.

Tests that run a pass from a recipe can write the recipe from a dict with ``recipe_toml``
instead of pasting TOML text: the test then states only the keys it varies.
"""

from .conformance import Problem, assert_conformant, check_pass
from .fixtures import sample_context, sample_ir
from .models import ResidualBlock
from .toml_text import recipe_toml

__all__ = [
    "Problem",
    "ResidualBlock",
    "assert_conformant",
    "check_pass",
    "recipe_toml",
    "sample_context",
    "sample_ir",
]
