"""Measure retrieval quality on your own catalog, and how it holds up under real-world photo faults.

    from prodvec.evaluate import evaluate, read_queries
    from prodvec.images.views import SINGLE_VIEW
    # encoder: the one that embedded the catalog; policy: its view policy (PRODVEC_CATALOG_VIEWS)
    result = evaluate(session, read_queries("queries.csv"), k=10, robust=True, encoder=encoder, policy=SINGLE_VIEW)
    result.as_dict()  # {"n": 200, "recall@1": 0.93, ..., "mrr": 0.95, "precision@10": 0.81}
"""
from prodvec.evaluate.run import Evaluation, LabelledQuery, evaluate, read_queries

__all__ = ["Evaluation", "LabelledQuery", "evaluate", "read_queries"]
