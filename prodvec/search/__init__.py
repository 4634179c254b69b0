"""Filtered similarity search that is always complete.

    from prodvec.search import Sku, similar_to
    result = similar_to(session, Sku("SHOE-1"), k=10, where=[Product.price < 50])
    result.exact  # True: every matching product was compared; False: the HNSW index answered
    result.recall  # an index answer: recall@10 `prodvec recall` measured for such searches here

``Product.similar_to`` / ``Product.similar_to_text`` are the same calls on the model.
"""
from prodvec.search.query import Sku, Text
from prodvec.search.result import Hit, SearchResult
from prodvec.search.similar import similar_to, similar_to_many, similar_to_text

__all__ = ["Hit", "SearchResult", "Sku", "Text", "similar_to", "similar_to_many", "similar_to_text"]
