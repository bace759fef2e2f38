"""Analysis of stored runs: statistics with counts, headline facts, the recommendation matrix."""
