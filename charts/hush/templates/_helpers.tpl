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
