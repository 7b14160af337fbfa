"""Test tooling that ships with the package: the fake W&B Inference upstream."""
