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
Role (a list of namespaces). Exactly the requests it makes: tests/operator/test_operator_rbac.py
derives them from a run of the operator and fails on any grant missing or extra. Keep in
step with examples/README.md ("RBAC it needs").
*/}}
{{- define "conveyor.namespacedRules" -}}
# JobQueues: kopf lists and watches them and patches its annotations and the legacy
# finalizers away; the operator reads one when a worker pod is lost.
- apiGroups: ["conveyor.dev"]
  resources: ["jobqueues"]
  verbs: ["get", "list", "watch", "patch"]
- apiGroups: ["conveyor.dev"]
  resources: ["jobqueues/status"]
  verbs: ["patch"]
# Owned objects carry blockOwnerDeletion: setting it needs update on the owner's finalizers.
- apiGroups: ["conveyor.dev"]
  resources: ["jobqueues/finalizers"]
  verbs: ["update"]
# The objects each JobQueue owns, written with server-side apply (patch, and create when the
# apply creates one), listed and watched (kopf, by the operator's labels) so a change or
# deletion reconciles their JobQueue at once. No delete: the garbage collector removes them
# with their JobQueue. Deployments are also read (the autoscaler's current replicas).
- apiGroups: ["apps"]
  resources: ["deployments"]
  verbs: ["get", "list", "watch", "create", "patch"]
- apiGroups: [""]
  resources: ["configmaps", "services"]
  verbs: ["list", "watch", "create", "patch"]
- apiGroups: ["policy"]
  resources: ["poddisruptionbudgets"]
  verbs: ["list", "watch", "create", "patch"]
{{- if .Values.monitoring.serviceMonitors.enabled }}
# Read and deleted too: when a JobQueue stops asking for one, the operator removes its own.
- apiGroups: ["monitoring.coreos.com"]
  resources: ["servicemonitors"]
  verbs: ["get", "list", "watch", "create", "patch", "delete"]
{{- end }}
# spec.redis.secretRef (the Redis URL) and spec.redis.tls.caSecretRef / clientCertSecretRef
# (the CA and the client certificate), each read by name in the JobQueue's namespace (so
# cluster-wide when every namespace is watched). Never listed or written.
- apiGroups: [""]
  resources: ["secrets"]
  verbs: ["get"]
# Worker pods: listed and watched so a lost pod's jobs are released at once (pods.py), and
# listed by the autoscaler; patched only to set controller.kubernetes.io/pod-deletion-cost
# before a scale-down (idle pods go first).
- apiGroups: [""]
  resources: ["pods"]
  verbs: ["list", "watch", "patch"]
# Autoscaling: an HPA (or a KEDA ScaledObject) on a worker Deployment makes the operator leave
# its replicas alone; listed and watched (kopf indexes them), never written.
- apiGroups: ["autoscaling"]
  resources: ["horizontalpodautoscalers"]
  verbs: ["list", "watch"]
{{- if .Capabilities.APIVersions.Has "keda.sh/v1alpha1/ScaledObject" }}
- apiGroups: ["keda.sh"]
  resources: ["scaledobjects"]
  verbs: ["list", "watch"]
{{- end }}
# Events on JobQueues: kopf and the operator post new ones, never update them.
- apiGroups: [""]
  resources: ["events"]
  verbs: ["create"]
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

{{/* The web dashboard (webDashboard): its Deployment's and Service's name. */}}
{{- define "conveyor.webDashboardName" -}}
{{- printf "%s-web-dashboard" (include "conveyor.fullname" .) }}
{{- end }}

{{/* Selector of the web dashboard pods (immutable on the Deployment: never add to it). */}}
{{- define "conveyor.webDashboardSelector" -}}
app.kubernetes.io/name: {{ include "conveyor.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: web-dashboard
{{- end }}
