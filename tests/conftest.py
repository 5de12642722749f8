"""Test-wide settings: every test has a hard time limit (pyproject), and the repo root is importable."""
