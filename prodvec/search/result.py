"""What a search returns: hits nearest first, and whether every matching product was compared."""
from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Literal, overload

from prodvec.models import Product

#: 'exact': every matching product was compared; 'hnsw': the index answered in full;
#: 'hnsw+exact': the index came back short, so the exact pass answered.
Strategy = Literal["exact", "hnsw", "hnsw+exact"]


@dataclass(frozen=True)
class Hit:
    product: Product
    distance: float  # cosine distance (0 = same direction, 2 = opposite)


@dataclass(frozen=True)
class SearchResult(Sequence[Hit]):
    """The hits, nearest first, with how they were found.

    ``exact``: every matching product was compared (an exact pass answered), so these are the
    true k nearest and a short list means there are no more. False: an HNSW index answered
    with k hits, which are the true k nearest only as far as the index's recall goes.
    ``candidates``: how many products the planner estimated the filter keeps (it chose the
    strategy; misestimates cost time, never completeness).
    ``recall``: for an index answer, the mean recall@10 `prodvec recall` measured on this
    catalog for this kind of search (unfiltered, iterative scan, quick look, category index)
    and queries as far from the catalog as this one; None for exact answers, and for index
    answers before any measurement.
    ``model``: the model whose vectors were searched (the catalog's active model at the time, as
    products.embedding_model names it); None before a model is recorded.
    """

    hits: tuple[Hit, ...]
    exact: bool
    strategy: Strategy
    candidates: int
    recall: float | None = None
    model: str | None = None

    @overload
    def __getitem__(self, index: int) -> Hit: ...
    @overload
    def __getitem__(self, index: slice) -> Sequence[Hit]: ...
    def __getitem__(self, index: int | slice) -> Hit | Sequence[Hit]:
        return self.hits[index]

    def __len__(self) -> int:
        return len(self.hits)

    def __iter__(self) -> Iterator[Hit]:
        return iter(self.hits)

    @property
    def products(self) -> list[Product]:
        return [hit.product for hit in self.hits]
