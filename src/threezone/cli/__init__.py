"""threezone.cli."""
