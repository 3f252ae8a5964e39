"""Immutable delivery: which workloads a policy change rolls, and how far each has got.

Pure functions over plain Kubernetes objects (dicts): ``trigger`` decides which
Deployments, StatefulSets and DaemonSets must roll and builds the server-side apply body
that rolls them (one pod-template annotation, owned by the ``hush-operator`` field manager);
``progress`` turns workloads and their pods into ``DPPolicy.status.rollout`` and the
``RolloutComplete`` / ``RolloutStalled`` conditions. The I/O lives in ``hush.kube`` and the
wiring in ``hush.handlers.rollout``.
"""
