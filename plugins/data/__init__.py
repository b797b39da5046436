"""Built-in dataset sources (entry point ``datasets``) and built-in models (``builtin-models``).

``sources``: the sources a recipe's data splits name (text lines, JSONL, ``.npz`` arrays,
synthetic, stdlib docstrings and sentences, scikit-learn's 8x8 digits); ``text_domains``: more
kinds of English text, registered with them (the Python reference, torch's and NumPy's
docstrings, the dependencies' descriptions, a mix for fine-tuning); ``builtin_models``:
the small CNNs fxopt trains itself on the digits, named in a recipe as ``builtin:<name>``.
"""
