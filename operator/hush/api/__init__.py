"""hush.api."""
