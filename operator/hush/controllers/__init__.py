"""Long-running controllers inside the operator process, fed by kopf watch events.

They sit at the I/O edge with the accountant and the webhook server: they keep in-memory
state, call pure decisions (``hush.rollout``) and write through ``hush.kube``.
"""
