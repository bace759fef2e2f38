"""pushlab."""
