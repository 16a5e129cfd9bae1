"""dgm_edu."""
