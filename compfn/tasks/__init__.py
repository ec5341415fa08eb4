"""Tasks: what a model is asked and how its answers are checked (no model code here)."""
