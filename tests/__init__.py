"""The test suite (a package, so that ``tests.factories`` imports the same way everywhere)."""
