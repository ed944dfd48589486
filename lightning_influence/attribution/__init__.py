"""Influence scores, explanations of validation errors, training dynamics (find what to fix)."""
