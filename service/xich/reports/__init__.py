"""The reports: one audit's HTML page and a model's dominance history."""
