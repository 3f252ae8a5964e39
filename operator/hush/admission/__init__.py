"""Admission decisions as pure functions over AdmissionReview requests.

``review`` parses AdmissionReview bodies and builds answers, ``mutation`` decides the Pod
patch (with ``hush.injection``), ``validation`` checks workloads against the enforcement
rules, ``policies`` builds the ValidatingAdmissionPolicies (static rules evaluated inside the
apiserver), ``audit`` finds existing workloads that break the rules (``hush audit``, the
violation metric), ``webhooks`` builds the webhook configurations, ``certificates`` decides
when the serving certificate is renewed. Nothing here does I/O: the server (``hush.webhook``)
does the lookups and hands their results in.
"""
