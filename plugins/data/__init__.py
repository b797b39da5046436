"""Built-in dataset sources (entry point ``datasets``) and built-in models (``builtin-models``).

``sources``: the sources a recipe's data splits name (text lines, JSONL, ``.npz`` arrays,
synthetic, stdlib docstrings and sentences, scikit-learn's 8x8 digits); ``builtin_models``:
the small CNNs fxopt trains itself on the digits, named in a recipe as ``builtin:<name>``.
"""
