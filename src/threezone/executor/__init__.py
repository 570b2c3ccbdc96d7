"""threezone.executor."""
