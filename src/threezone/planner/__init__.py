"""threezone.planner."""
