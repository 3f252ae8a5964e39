"""hush.cli."""
