"""Models over tokens and images: the GPT (gpt.py) and the sample-scoring classifier (classifier.py)."""
