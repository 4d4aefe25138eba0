"""Complexity measures: weight statistics and the local learning coefficient (SGLD)."""
