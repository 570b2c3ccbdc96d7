"""threezone.testing."""
