"""Task data: the embedded synthetic tasks (``synthetic``: generated JSONL + lm-eval YAML)
and the training examples drawn from task data (``train_data``)."""
