"""Pure builders of what the mutating webhook adds to a pod (no I/O, no cluster)."""
