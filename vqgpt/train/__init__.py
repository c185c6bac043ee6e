"""Training: one module per stage (tokenizer.py, gpt.py, classifier.py) and what they share (runtime, optim,
loggers)."""
