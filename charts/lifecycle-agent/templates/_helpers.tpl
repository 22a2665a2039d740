{{/*
The chart name, truncated to a DNS label.
*/}}
{{- define "lifecycle-agent.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
The full name: the release name, suffixed with the chart name unless it already contains it.
*/}}
{{- define "lifecycle-agent.fullname" -}}
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

{{- define "lifecycle-agent.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "lifecycle-agent.namespace" -}}
{{- default .Release.Namespace .Values.namespaceOverride }}
{{- end }}

{{/*
Selector labels: stable for the life of the release (a DaemonSet's selector is immutable).
*/}}
{{- define "lifecycle-agent.selectorLabels" -}}
app.kubernetes.io/name: {{ include "lifecycle-agent.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "lifecycle-agent.labels" -}}
helm.sh/chart: {{ include "lifecycle-agent.chart" . }}
{{ include "lifecycle-agent.selectorLabels" . }}
{{- with .Chart.AppVersion }}
app.kubernetes.io/version: {{ . | quote }}
{{- end }}
app.kubernetes.io/component: metrics
app.kubernetes.io/part-of: {{ include "lifecycle-agent.name" . }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{- define "lifecycle-agent.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "lifecycle-agent.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/*
An image reference from {registry, repository, tag, digest}; call with (dict "image" ... "root" $ "defaultTag" ...).
*/}}
{{- define "lifecycle-agent.imageRef" -}}
{{- $registry := default .image.registry .root.Values.global.imageRegistry }}
{{- $tag := default .defaultTag .image.tag | toString }}
{{- $ref := printf "%s:%s" .image.repository $tag }}
{{- if $registry }}
{{- $ref = printf "%s/%s" $registry $ref }}
{{- end }}
{{- if .image.digest }}
{{- $ref = printf "%s@%s" $ref .image.digest }}
{{- end }}
{{- $ref }}
{{- end }}

{{- define "lifecycle-agent.image" -}}
{{- include "lifecycle-agent.imageRef" (dict "image" .Values.image "root" . "defaultTag" .Chart.AppVersion) }}
{{- end }}

{{- define "lifecycle-agent.imagePullSecrets" -}}
{{- include "lifecycle-agent.pullSecretList" (concat .Values.global.imagePullSecrets .Values.imagePullSecrets) }}
{{- end }}

{{/*
Pull secrets as a list of {name: ...}, from names or {name: ...} objects.
*/}}
{{- define "lifecycle-agent.pullSecretList" -}}
{{- range . }}
{{- if kindIs "map" . }}
- name: {{ .name }}
{{- else }}
- name: {{ . }}
{{- end }}
{{- end }}
{{- end }}

{{/*
The runtime socket on the node: socketPath, or the runtime's usual one.
*/}}
{{- define "lifecycle-agent.socketPath" -}}
{{- if .Values.socketPath }}
{{- .Values.socketPath }}
{{- else }}
{{- get (dict "containerd" "/run/containerd/containerd.sock" "crio" "/var/run/crio/crio.sock" "docker" "/var/run/docker.sock" "podman" "/run/podman/podman.sock") .Values.runtime }}
{{- end }}
{{- end }}

{{/*
The socket the agent talks to: the runtime's, or the socket proxy's in the shared emptyDir.
*/}}
{{- define "lifecycle-agent.agentSocket" -}}
{{- if .Values.socketProxy.enabled }}
{{- "/run/lifecycle-agent/runtime.sock" }}
{{- else }}
{{- include "lifecycle-agent.socketPath" . }}
{{- end }}
{{- end }}

{{/*
"true" when the agent asks the Kubernetes API (config.kube is not off; a bare YAML off is false).
*/}}
{{- define "lifecycle-agent.kubeEnabled" -}}
{{- $k := .Values.config.kube }}
{{- if kindIs "bool" $k }}
{{- ternary "true" "" $k }}
{{- else if ne (toString $k) "off" }}
{{- "true" }}
{{- end }}
{{- end }}

{{/*
"true" when something in the pod uses the service-account token: the agent (kube), kube-rbac-proxy
(token and access reviews) or whatever rbac.extraRules are for.
*/}}
{{- define "lifecycle-agent.needsToken" -}}
{{- if or (include "lifecycle-agent.kubeEnabled" .) .Values.kubeRBACProxy.enabled .Values.rbac.extraRules }}
{{- "true" }}
{{- end }}
{{- end }}

{{- define "lifecycle-agent.automountToken" -}}
{{- if and .Values.serviceAccount.automountServiceAccountToken (include "lifecycle-agent.needsToken" .) }}true{{ else }}false{{ end }}
{{- end }}

{{/*
The labels every alert aggregation keeps besides its own: the cluster label and the extra ones.
*/}}
{{- define "lifecycle-agent.aggregationLabels" -}}
{{- $l := list }}
{{- with .Values.prometheusRule.clusterLabel }}
{{- $l = append $l . }}
{{- end }}
{{- join ", " (concat $l .Values.prometheusRule.additionalAggregationLabels) }}
{{- end }}

{{/*
Where the agent's HTTP server listens: behind kube-rbac-proxy only on loopback.
*/}}
{{- define "lifecycle-agent.listen" -}}
{{- if .Values.kubeRBACProxy.enabled }}
{{- printf "127.0.0.1:%d" (int .Values.kubeRBACProxy.upstreamPort) }}
{{- else }}
{{- printf "%s:%d" .Values.config.listenHost (int .Values.service.port) }}
{{- end }}
{{- end }}

{{/*
The series selector the alerts are scoped by (the job Prometheus gives the scraped agents).
*/}}
{{- define "lifecycle-agent.jobSelector" -}}
{{- if .Values.prometheusRule.jobSelector }}
{{- .Values.prometheusRule.jobSelector }}
{{- else if and .Values.podMonitor.enabled (not .Values.serviceMonitor.enabled) }}
{{- printf "job=%q" (printf "%s/%s" (include "lifecycle-agent.monitorNamespace" (dict "ns" .Values.podMonitor.namespace "root" .)) (include "lifecycle-agent.fullname" .)) }}
{{- else }}
{{- printf "job=%q" (include "lifecycle-agent.fullname" .) }}
{{- end }}
{{- end }}

{{/*
Namespace of a monitoring object: its own setting, else the release's.
*/}}
{{- define "lifecycle-agent.monitorNamespace" -}}
{{- default (include "lifecycle-agent.namespace" .root) .ns }}
{{- end }}

{{/*
One scrape endpoint's body, shared by the ServiceMonitor and the PodMonitor.
*/}}
{{- define "lifecycle-agent.scrapeEndpoint" -}}
{{- $m := .monitor }}
{{- $proxy := .root.Values.kubeRBACProxy.enabled }}
port: metrics
path: /metrics
honorLabels: {{ $m.honorLabels }}
{{- if or $m.scheme $proxy }}
scheme: {{ default "https" $m.scheme }}
{{- end }}
{{- with $m.interval }}
interval: {{ . }}
{{- end }}
{{- with $m.scrapeTimeout }}
scrapeTimeout: {{ . }}
{{- end }}
{{- if $m.authorization }}
authorization:
  {{- toYaml $m.authorization | nindent 2 }}
{{- else if and $proxy .serviceMonitor }}
bearerTokenFile: /var/run/secrets/kubernetes.io/serviceaccount/token
{{- end }}
{{- if $m.tlsConfig }}
tlsConfig:
  {{- toYaml $m.tlsConfig | nindent 2 }}
{{- else if $proxy }}
tlsConfig:
  insecureSkipVerify: true
{{- end }}
relabelings:
  # The node of the scraped agent, for `up` and the agent-down alert (scraped series carry it already).
  - sourceLabels: [__meta_kubernetes_pod_node_name]
    targetLabel: node
  {{- with $m.relabelings }}
  {{- toYaml . | nindent 2 }}
  {{- end }}
{{- with $m.metricRelabelings }}
metricRelabelings:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end }}

{{/*
The runtime socket's volume mount (the socket itself, or its directory with mountSocketDirectory).
*/}}
{{- define "lifecycle-agent.socketMount" -}}
{{- $socket := include "lifecycle-agent.socketPath" . }}
name: runtime-socket
mountPath: {{ ternary (dir $socket) $socket .Values.mountSocketDirectory }}
readOnly: true
{{- end }}

{{/*
The agent's liveness action: GET /healthz on its port, or, behind kube-rbac-proxy (where the
agent listens on loopback only), its own CLI asking the loopback port, so that the probe does
not depend on the proxy.
*/}}
{{- define "lifecycle-agent.livenessAction" -}}
{{- if .Values.kubeRBACProxy.enabled }}
exec:
  command:
    - /usr/local/bin/lifecycle-agent
    - stats
    - --json
    - --url
    - {{ printf "http://127.0.0.1:%d" (int .Values.kubeRBACProxy.upstreamPort) }}
{{- else }}
httpGet:
  path: /healthz
  port: {{ .Values.service.port }}
  scheme: HTTP
{{- end }}
{{- end }}
