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
Cluster-scoped reads are in "asterisk-trunk-operator.clusterRules" and
"asterisk-trunk-operator.namespaceListRules".
*/}}
{{- define "asterisk-trunk-operator.namespacedRules" -}}
# TwilioTrunks and DIDSegments: Kopf's watches; the operator's finalizer (merge patch).
- apiGroups: [trunks.asterisk-operator.dev]
  resources: [twiliotrunks, didsegments]
  verbs: [list, watch, patch]
- apiGroups: [trunks.asterisk-operator.dev]
  resources: [twiliotrunks/status, didsegments/status]
  verbs: [patch]
# Credentials Secrets (watched, read) and the rendered auth Secrets (created, replaced; the
# garbage collector deletes them with their owner, the operator never does).
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

{{- define "asterisk-trunk-operator.clusterRules" -}}
# Kopf follows CRDs being added or changed. Without this it retries for about a minute,
# logging errors, then goes on with the CRDs it found at start.
- apiGroups: [apiextensions.k8s.io]
  resources: [customresourcedefinitions]
  verbs: [list, watch]
{{- end }}

{{/*
Only when watchNamespaces is set: Kopf then lists and watches namespaces to match its namespace
list. Without this it retries for about a minute, logging errors, before it serves the listed
names as they are, so its watches start a minute late. Not needed once the operator sets
`settings.scanning.disabled` in that mode (then neither this rule nor the CRD rule is used).
*/}}
{{- define "asterisk-trunk-operator.namespaceListRules" -}}
# Kopf matches its namespace list against the namespaces that exist.
- apiGroups: [""]
  resources: [namespaces]
  verbs: [list, watch]
{{- end }}
