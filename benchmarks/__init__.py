"""pushlab benchmarks: pushlab's server against bare references, measured in the same run."""
