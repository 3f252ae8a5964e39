"""The noise sidecar: a reverse proxy that noises, charges and labels aggregate answers.

Runs as ``hush sidecar`` beside the application container, configured only from what the
injector baked into the pod spec (``hush.sidecar.config``). It never imports kopf, the
Kubernetes client or the operator's accountant: it talks to the accountant over HTTPS.
"""
