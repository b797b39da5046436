"""The Hugging Face loader (entry point ``huggingface``).

``loader``: a ``config.json`` + safetensors (+ tokenizer) directory as a model to optimize;
``tasks``: the task heads that wrap the loaded model so it takes positional tensors and
returns a tuple (pooled sentence embeddings, logits, ...).
"""
