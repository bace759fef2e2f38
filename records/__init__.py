"""Records: the tables every client and experiment shares, the result store, run metadata."""
