"""Generation: token sampling loops (sampling.py), the in-memory image pipeline around them (pipeline.py) and
sample.py's files (writer.py)."""
