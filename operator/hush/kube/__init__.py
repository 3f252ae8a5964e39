"""The only code in Hush that calls the Kubernetes API directly (besides kopf itself)."""
