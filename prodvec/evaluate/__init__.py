"""Measure retrieval quality on your own catalog, and how it holds up under real-world photo faults.

    from prodvec.evaluate import evaluate, read_queries
    result = evaluate(session, read_queries("queries.csv"), encoder, k=10, robust=True)
    result.as_dict()  # {"n": 200, "recall@1": 0.93, ..., "mrr": 0.95, "precision@10": 0.81}
"""
from prodvec.evaluate.run import Evaluation, LabelledQuery, evaluate, read_queries

__all__ = ["Evaluation", "LabelledQuery", "evaluate", "read_queries"]
