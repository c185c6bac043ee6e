"""Generation: token sampling loops (sampling.py) and the image pipeline around them (pipeline.py)."""
