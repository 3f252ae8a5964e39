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

{{/* -- Webhook serving certificates (docs/design/0012-webhook-certificates.md) -- */}}

{{/* The Service the apiserver calls for admission; the serving certificate is for its names. */}}
{{- define "hush.webhookServiceName" -}}
{{- printf "%s-webhook" (include "hush.fullname" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "hush.webhookCertificateSecretName" -}}
{{- default (printf "%s-webhook-tls" (include "hush.fullname" .)) .Values.webhook.certificates.secretName -}}
{{- end -}}

{{/* The webhook configurations (cluster-scoped); the names are those of
     hush.admission.webhooks (MUTATING_CONFIGURATION, VALIDATING_CONFIGURATION). */}}
{{- define "hush.mutatingWebhookConfigurationName" -}}hush-injector{{- end -}}
{{- define "hush.validatingWebhookConfigurationName" -}}hush-validator{{- end -}}

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
- --webhook-mutating-configuration={{ include "hush.mutatingWebhookConfigurationName" . }}
- --webhook-validating-configuration={{ include "hush.validatingWebhookConfigurationName" . }}
{{- end }}
{{- end -}}
