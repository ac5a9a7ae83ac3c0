{{/* Chart name, overridable. */}}
{{- define "asterisk-trunk-operator.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Full name of the release's objects: the release name when it already holds the chart name. */}}
{{- define "asterisk-trunk-operator.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "asterisk-trunk-operator.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels of every object. */}}
{{- define "asterisk-trunk-operator.labels" -}}
helm.sh/chart: {{ include "asterisk-trunk-operator.chart" . }}
{{ include "asterisk-trunk-operator.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/component: operator
app.kubernetes.io/part-of: asterisk-trunk-operator
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{/* Labels that select the operator's pod: never change them (a Deployment's selector is immutable). */}}
{{- define "asterisk-trunk-operator.selectorLabels" -}}
app.kubernetes.io/name: {{ include "asterisk-trunk-operator.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "asterisk-trunk-operator.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "asterisk-trunk-operator.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "asterisk-trunk-operator.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{/* Port of Kopf's liveness endpoint (`kopf run --liveness`). */}}
{{- define "asterisk-trunk-operator.livenessPort" -}}8080{{- end }}

{{/*
The operator's permissions, one list for both RBAC modes: what kube.py calls and what Kopf's
watches need, nothing more (charts/asterisk-trunk-operator/README.md explains each rule).
No cluster-scoped resource: the operator sets Kopf's `settings.scanning.disabled`, so Kopf never
lists or watches CRDs (they come with the chart) or namespaces (they are given exactly).
*/}}
{{- define "asterisk-trunk-operator.namespacedRules" -}}
# TwilioTrunks and DIDSegments: Kopf's watches; the operator's finalizer (merge patch).
- apiGroups: [trunks.asterisk-operator.dev]
  resources: [twiliotrunks, didsegments]
  verbs: [list, watch, patch]
- apiGroups: [trunks.asterisk-operator.dev]
  resources: [twiliotrunks/status, didsegments/status]
  verbs: [patch]
# TwilioAccounts: watched (Twilio API credentials for opted-in trunks); their status.
- apiGroups: [trunks.asterisk-operator.dev]
  resources: [twilioaccounts]
  verbs: [list, watch]
- apiGroups: [trunks.asterisk-operator.dev]
  resources: [twilioaccounts/status]
  verbs: [patch]
# Credentials Secrets (watched, read), the rendered auth Secrets and the Secrets of the
# credentials Twilio holds for opted-in trunks (created, replaced; the garbage collector
# deletes them with their owner, the operator never does).
- apiGroups: [""]
  resources: [secrets]
  verbs: [get, list, watch, create, update]
# Rendered-state ConfigMaps: created, replaced, listed at start; surplus -part-N deleted.
# Never watched.
- apiGroups: [""]
  resources: [configmaps]
  verbs: [get, list, create, update, delete]
# Asterisk pods: watched; the readiness-gate condition; delivery and observation over exec,
# a WebSocket upgrade (a GET): authorized as `get` by older API servers, and as `create` too
# since Kubernetes 1.35.
- apiGroups: [""]
  resources: [pods]
  verbs: [list, watch]
- apiGroups: [""]
  resources: [pods/status]
  verbs: [patch]
- apiGroups: [""]
  resources: [pods/exec]
  verbs: [create, get]
- apiGroups: [""]
  resources: [events]
  verbs: [create]
{{- end }}
