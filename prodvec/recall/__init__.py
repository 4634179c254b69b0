"""Recall of index searches on the user's own catalog: measured (measure.py) on a sample
of queries (sample.py), tuned to a target (tune.py), stored (store.py), watched (watch.py)."""
