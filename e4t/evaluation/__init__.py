"""Evaluation: identity, prompt alignment, speed against baselines; reports; promotion."""
