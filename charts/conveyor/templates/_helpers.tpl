{{/* Chart name, truncated to a DNS label. */}}
{{- define "conveyor.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Full name: the release name, plus the chart name unless the release name has it. */}}
{{- define "conveyor.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 40 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 40 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 40 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "conveyor.operatorName" -}}
{{- printf "%s-operator" (include "conveyor.fullname" .) }}
{{- end }}

{{/* The ClusterKopfPeering the replicas elect a leader in: cluster-scoped, so one per release. */}}
{{- define "conveyor.peeringName" -}}
{{- printf "%s-%s" .Release.Namespace (include "conveyor.operatorName" .) | trunc 253 }}
{{- end }}

{{- define "conveyor.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels on every object. */}}
{{- define "conveyor.labels" -}}
helm.sh/chart: {{ include "conveyor.chart" . }}
app.kubernetes.io/name: {{ include "conveyor.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: conveyor
{{- end }}

{{/* Selector of the operator pod (immutable on the Deployment: never add to it). */}}
{{- define "conveyor.operatorSelector" -}}
app.kubernetes.io/name: {{ include "conveyor.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
{{- end }}

{{- define "conveyor.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "conveyor.operatorName" .) .Values.serviceAccount.name }}
{{- else }}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "conveyor.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{/*
The operator's namespaced rules: the same in the ClusterRole (all namespaces) and in each
Role (a list of namespaces). Keep in step with examples/README.md ("RBAC it needs").
*/}}
{{- define "conveyor.namespacedRules" -}}
# JobQueues: kopf lists and watches them, and patches their finalizers and its annotations.
- apiGroups: ["conveyor.dev"]
  resources: ["jobqueues"]
  verbs: ["get", "list", "watch", "patch"]
- apiGroups: ["conveyor.dev"]
  resources: ["jobqueues/status"]
  verbs: ["get", "patch"]
# Owned objects carry blockOwnerDeletion: setting it needs update on the owner's finalizers.
- apiGroups: ["conveyor.dev"]
  resources: ["jobqueues/finalizers"]
  verbs: ["update"]
# The objects each JobQueue owns, written with server-side apply.
- apiGroups: ["apps"]
  resources: ["deployments"]
  verbs: ["get", "create", "patch", "delete"]
- apiGroups: [""]
  resources: ["configmaps", "services"]
  verbs: ["get", "create", "patch", "delete"]
- apiGroups: ["policy"]
  resources: ["poddisruptionbudgets"]
  verbs: ["get", "create", "patch", "delete"]
{{- if .Values.monitoring.serviceMonitors.enabled }}
- apiGroups: ["monitoring.coreos.com"]
  resources: ["servicemonitors"]
  verbs: ["get", "create", "patch", "delete"]
{{- end }}
# spec.redis.secretRef (the Redis URL) and spec.redis.tls.caSecretRef / clientCertSecretRef
# (the CA and the client certificate), read to report queue depth. Read only.
- apiGroups: [""]
  resources: ["secrets"]
  verbs: ["get"]
# Worker pods: watched so a lost pod's jobs are released at once (pods.py); patched only to set
# controller.kubernetes.io/pod-deletion-cost before an autoscaler scale-down (idle pods go first).
- apiGroups: [""]
  resources: ["pods"]
  verbs: ["get", "list", "watch", "patch"]
# Autoscaling: an HPA (or a KEDA ScaledObject) on a worker Deployment makes the operator leave
# its replicas alone; listed, never written.
- apiGroups: ["autoscaling"]
  resources: ["horizontalpodautoscalers"]
  verbs: ["list"]
{{- if .Capabilities.APIVersions.Has "keda.sh/v1alpha1/ScaledObject" }}
- apiGroups: ["keda.sh"]
  resources: ["scaledobjects"]
  verbs: ["list"]
{{- end }}
# Events on JobQueues (kopf and the operator post them).
- apiGroups: [""]
  resources: ["events"]
  verbs: ["create", "patch"]
{{- end }}

{{/* Cluster-scoped reads: kopf observes CRDs (and the operator checks for the ServiceMonitor CRD). */}}
{{- define "conveyor.clusterRules" -}}
- apiGroups: ["apiextensions.k8s.io"]
  resources: ["customresourcedefinitions"]
  verbs: ["get", "list", "watch"]
{{- if gt (int .Values.operator.replicas) 1 }}
# Leader election: kopf watches the ClusterKopfPeering and patches its keep-alive into it; the
# operator gets it, and creates it at start-up when missing (conveyor_operator.leader).
- apiGroups: ["kopf.dev"]
  resources: ["clusterkopfpeerings"]
  verbs: ["get", "list", "watch", "patch", "create"]
{{- end }}
{{- end }}
