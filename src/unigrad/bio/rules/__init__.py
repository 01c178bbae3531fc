"""Reward-modulated learning rules: estimators that learn from noise and a global reward signal."""
