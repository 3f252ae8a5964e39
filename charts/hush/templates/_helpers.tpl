{{/* Full name of release objects: the release name, plus "-hush" unless it already says so. */}}
{{- define "hush.fullname" -}}
{{- if contains "hush" .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-hush" .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "hush.labels" -}}
app.kubernetes.io/name: hush
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "hush.selectorLabels" -}}
app.kubernetes.io/name: hush
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
{{- end -}}

{{/* The leader-election Lease: one per release, in the release namespace. */}}
{{- define "hush.leaseName" -}}
{{- printf "%s-operator" (include "hush.fullname" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Leader election runs only with the accountant: it elects the one that accepts charges. */}}
{{- define "hush.leaderElection" -}}
{{- if and .Values.accountant.enabled .Values.operator.leaderElection.enabled -}}true{{- end -}}
{{- end -}}

{{/* The label the elected replica puts on its own pod (hush.accountant.leadership); the
     accountant Service selects it, so charges reach the leader and no standby. */}}
{{- define "hush.accountantLeaderLabel" -}}hush.dev/accountant-leader{{- end -}}

{{- define "hush.serviceAccountName" -}}
{{- default (include "hush.fullname" .) .Values.serviceAccount.name -}}
{{- end -}}

{{/* The image reference: by digest when one is given, else by tag. */}}
{{- define "hush.image" -}}
{{- if .Values.image.digest -}}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest -}}
{{- else -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}
{{- end -}}

{{/* Sidecar injection is on when asked for and the accountant (which sidecars charge) runs.
     The injected image must be pinned by digest (invariant 6): refused here, not at the
     first annotated pod. */}}
{{- define "hush.injection" -}}
{{- if and .Values.webhook.injection.enabled .Values.accountant.enabled -}}
{{- if not .Values.image.digest -}}
{{- fail "Sidecar injection needs the image pinned by digest: set image.digest=sha256:<64 hex> (the digest of image.repository), or webhook.injection.enabled=false" -}}
{{- end -}}
true
{{- end -}}
{{- end -}}

{{/* The image injected as the sidecar: the chart's own image, by digest only. */}}
{{- define "hush.sidecarImage" -}}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest -}}
{{- end -}}

{{/* -- Accountant -- */}}

{{- define "hush.accountantServiceName" -}}
{{- printf "%s-accountant" (include "hush.fullname" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Where injected sidecars reach the accountant: its Service. */}}
{{- define "hush.accountantUrl" -}}
{{- printf "https://%s.%s.svc:%d" (include "hush.accountantServiceName" .) .Release.Namespace (int .Values.accountant.port) -}}
{{- end -}}

{{/* -- Webhooks and their serving certificates (docs/design/0012-webhook-certificates.md) -- */}}

{{/* The Service the apiserver calls for admission; the serving certificate is for its names. */}}
{{- define "hush.webhookServiceName" -}}
{{- printf "%s-webhook" (include "hush.fullname" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* webhook.url without a trailing slash; empty when the apiserver calls the Service. */}}
{{- define "hush.webhookUrl" -}}
{{- .Values.webhook.url | trimSuffix "/" -}}
{{- end -}}

{{/* The host name of webhook.url, which the serving certificate must then also carry. */}}
{{- define "hush.webhookUrlHost" -}}
{{- with include "hush.webhookUrl" . -}}
{{- (urlParse .).hostname -}}
{{- end -}}
{{- end -}}

{{/* "true" when the webhook.url host is an IP address (IPv4 dotted, or IPv6 with colons). */}}
{{- define "hush.webhookUrlHostIsAddress" -}}
{{- $host := include "hush.webhookUrlHost" . -}}
{{- if or (regexMatch "^[0-9]+(\\.[0-9]+){3}$" $host) (contains ":" $host) -}}true{{- end -}}
{{- end -}}

{{- define "hush.webhookCertificateSecretName" -}}
{{- default (printf "%s-webhook-tls" (include "hush.fullname" .)) .Values.webhook.certificates.secretName -}}
{{- end -}}

{{/* The webhook configurations (cluster-scoped, so per release): for a release named hush
     these are hush.admission.webhooks.MUTATING_CONFIGURATION and VALIDATING_CONFIGURATION. */}}
{{- define "hush.mutatingWebhookConfigurationName" -}}
{{- printf "%s-injector" (include "hush.fullname" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- define "hush.validatingWebhookConfigurationName" -}}
{{- printf "%s-validator" (include "hush.fullname" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* The certificate mode, refused early when misspelt. */}}
{{- define "hush.webhookCertificateMode" -}}
{{- $mode := .Values.webhook.certificates.mode -}}
{{- if not (has $mode (list "self-signed" "cert-manager")) -}}
{{- fail (printf "webhook.certificates.mode must be self-signed or cert-manager, not %q" $mode) -}}
{{- end -}}
{{- $mode -}}
{{- end -}}

{{/* cert-manager's Certificate for the webhook Service. */}}
{{- define "hush.webhookCertificateName" -}}
{{- printf "%s-webhook" (include "hush.fullname" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Annotations for both webhook configurations: with cert-manager, its CA injector fills
     in the caBundle from the Certificate's Secret; self-signed, the operator does. */}}
{{- define "hush.webhookConfigurationAnnotations" -}}
{{- if eq (include "hush.webhookCertificateMode" .) "cert-manager" -}}
cert-manager.io/inject-ca-from: {{ printf "%s/%s" .Release.Namespace (include "hush.webhookCertificateName" .) }}
{{- end -}}
{{- end -}}

{{/* `hush operator` arguments for the certificate (the mount paths are in deployment.yaml). */}}
{{- define "hush.webhookCertificateArgs" -}}
- --webhook-certs={{ include "hush.webhookCertificateMode" . }}
- --webhook-cert-dir=/var/run/hush/webhook-certs
- --webhook-cert-sync-interval={{ .Values.webhook.certificates.syncIntervalSeconds }}
{{- if eq (include "hush.webhookCertificateMode" .) "cert-manager" }}
- --webhook-tls-cert=/etc/hush/webhook-tls/tls.crt
- --webhook-tls-key=/etc/hush/webhook-tls/tls.key
{{- else }}
# The namespace of the Service and the Secret is $POD_NAMESPACE.
- --webhook-service={{ include "hush.webhookServiceName" . }}
- --webhook-secret={{ include "hush.webhookCertificateSecretName" . }}
- --webhook-mutating-configuration={{ if include "hush.injection" . }}{{ include "hush.mutatingWebhookConfigurationName" . }}{{ end }}
- --webhook-validating-configuration={{ include "hush.validatingWebhookConfigurationName" . }}
{{- with include "hush.webhookUrlHost" . }}
# The apiserver calls webhook.url: the certificate must name its host too.
{{- if include "hush.webhookUrlHostIsAddress" $ }}
- --webhook-cert-ip={{ . }}
{{- else }}
- --webhook-cert-dns-name={{ . }}
{{- end }}
{{- end }}
{{- end }}
{{- end -}}
