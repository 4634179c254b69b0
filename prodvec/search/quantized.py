"""The two-stage index pass: binary codes find candidates, exact halfvec distances rank them.

When products has the binary-code index (`prodvec quantized-index create`,
migrations/0008_quantized_index.sql), the index passes of Product.similar_to search it instead
of the halfvec HNSW index: the 10 × k (at least 100) matching products nearest to the query's
code by Hamming distance, re-ranked by their exact cosine distance (search_passes.sql's
index_codes).
The code index is several times smaller and faster to build; the re-rank restores the
ordering the codes blur (benchmarks/quantized.py has the recall and latency).

Its searches are kinds of index search of their own (codes_unfiltered, codes_filtered), so
`prodvec recall` measures their recall and `--tune` stores the candidates each distance band
needs (effort.py: a band's ef_search is then the candidates re-ranked). The guarantees stay
those of similar.py: a pass that could not fill its candidate list (the scan gave up, or fewer
products match) returns no hits, and the exact pass answers. A filter that a category's own
halfvec index serves (migrations/0003, plan.py) and the coarse column of a multi-view catalog
keep the halfvec pass: the code index covers products.embedding only.
"""
from __future__ import annotations

from prodvec.search.effort import EF_SEARCH_LIMIT, Kind
from prodvec.search.execute import IndexSettings

#: Candidates re-ranked per hit asked for, before `prodvec recall --tune` asks for more
#: (pgvector's ef_search allows up to 1,000 per index search): near queries' recall at about
#: the halfvec index's latency on a 100k catalog, not at 1M (docs/scaling.md has the figures).
CANDIDATES_PER_HIT = 10
#: A filtered pass scans the code graph until it holds its candidates: a budget of this many
#: tuples per expected match among them (Hamming comparisons of 64-byte codes are cheap) ...
SCAN_TUPLES_PER_CANDIDATE = 4
#: ... but at least pgvector's default budget.
SCAN_BUDGET_MIN = 20_000
#: With few matches (``few_matches``: an exact pass over them is cheap) the scan gets the tuples
#: that hold its candidates where matches lie as densely as in the whole catalog, times this.
#: A query near its matches (a shoe photo among shoes) meets them more densely and fills its
#: list; a query far from them runs out, and the exact pass answers it, as after the halfvec
#: index's quick look (plan.py): a longer scan would collect far candidates the codes rank
#: poorly, slower than exact (benchmarks/quantized.py, docs/scaling.md).
FEW_MATCHES_TUPLES_PER_CANDIDATE = 2


def code_plan(k: int, matches: float, total: float, *, filtered: bool, few_matches: bool,
              dimensions: int) -> tuple[Kind, IndexSettings]:
    """One search of the code graph for an unfiltered query; for a filtered one an iterative
    scan with a budget that reaches its candidates at the filter's selectivity."""
    # At least k = 10's list: the recall `prodvec recall` measures (recall@10) holds for fewer hits too.
    candidates = min(EF_SEARCH_LIMIT, CANDIDATES_PER_HIT * max(k, 10))
    if not filtered:
        return "codes_unfiltered", IndexSettings(candidates, None, dimensions)
    selectivity = min(1.0, max(matches, 1.0) / max(total, 1.0))
    if few_matches:
        budget = int(FEW_MATCHES_TUPLES_PER_CANDIDATE * candidates / selectivity)
    else:
        budget = int(max(SCAN_BUDGET_MIN, SCAN_TUPLES_PER_CANDIDATE * candidates / selectivity))
    return "codes_filtered", IndexSettings(candidates, min(budget, int(total) + 1), dimensions)
