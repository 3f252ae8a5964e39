"""The admission webhook server: HTTPS endpoints the apiserver calls, served by the operator.

The I/O edge around ``hush.admission``: reads the AdmissionReview, does the lookups a rule
needs (policies, namespaces, pods) and returns what the pure decision says.
"""
