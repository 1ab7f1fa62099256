{{/* Names: <release>-aiplane unless the release name already says aiplane; 63 characters, as labels allow. */}}
{{- define "aiplane.fullname" -}}
{{- if contains "aiplane" .Release.Name -}}
{{- .Release.Name | trunc 50 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-aiplane" .Release.Name | trunc 50 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "aiplane.componentName" -}}
{{- printf "%s-%s" (include "aiplane.fullname" .root) .component | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "aiplane.selectorLabels" -}}
app.kubernetes.io/name: aiplane
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "aiplane.labels" -}}
{{ include "aiplane.selectorLabels" . }}
app.kubernetes.io/part-of: aiplane
app.kubernetes.io/version: {{ .root.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .root.Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .root.Chart.Name .root.Chart.Version }}
{{- with .root.Values.region }}
aiplane.io/region: {{ . }}
{{- end }}
{{- end -}}

{{/* Labels of objects that belong to the release as a whole, not one component. */}}
{{- define "aiplane.releaseLabels" -}}
app.kubernetes.io/name: aiplane
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/part-of: aiplane
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "aiplane.image" -}}
{{- $tag := .Values.image.tag | default .Chart.AppVersion -}}
{{- if .Values.image.digest -}}
{{ .Values.image.repository }}@{{ .Values.image.digest }}
{{- else -}}
{{ .Values.image.repository }}:{{ $tag }}
{{- end -}}
{{- end -}}

{{/* The Secret and key holding the store's URL: the user's, or the bundled PostgreSQL's. */}}
{{- define "aiplane.dsnSecretName" -}}
{{- if .Values.postgresql.bundled.enabled -}}
{{ include "aiplane.componentName" (dict "root" . "component" "postgresql") }}
{{- else -}}
{{ required "postgresql.existingSecret.name is required (or set postgresql.bundled.enabled=true to try aiplane out)" .Values.postgresql.existingSecret.name }}
{{- end -}}
{{- end -}}

{{- define "aiplane.dsnSecretKey" -}}
{{- if .Values.postgresql.bundled.enabled -}}url{{- else -}}{{ .Values.postgresql.existingSecret.key }}{{- end -}}
{{- end -}}

{{/* The Secret and key of the PII key: the user's, or the one the chart makes (pii.yaml). */}}
{{- define "aiplane.piiSecretName" -}}
{{- .Values.pii.existingSecret.name | default (include "aiplane.componentName" (dict "root" . "component" "pii")) -}}
{{- end -}}

{{- define "aiplane.piiSecretKey" -}}
{{- if .Values.pii.existingSecret.name }}{{ .Values.pii.existingSecret.key }}{{ else }}key{{ end -}}
{{- end -}}

{{/* The ServiceAccount of governed Kafka consumer pods (the Connector operator's kafkaSource Deployments). */}}
{{- define "aiplane.consumerServiceAccount" -}}
{{- .Values.connectors.serviceAccount.name | default (include "aiplane.componentName" (dict "root" . "component" "kafka-source")) -}}
{{- end -}}

{{/* PSS restricted, for the pod and for each container. */}}
{{- define "aiplane.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: {{ .uid | default 10001 }}
runAsGroup: {{ .uid | default 10001 }}
fsGroup: {{ .uid | default 10001 }}
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{- define "aiplane.containerSecurityContext" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
runAsNonRoot: true
privileged: false
capabilities:
  drop: [ALL]
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{/* Environment every aiplane process gets: store, bus, region, logs and traces. */}}
{{- define "aiplane.commonEnv" -}}
- name: AIPLANE_DATABASE_URL
  valueFrom:
    secretKeyRef:
      name: {{ include "aiplane.dsnSecretName" .root }}
      key: {{ include "aiplane.dsnSecretKey" .root }}
- name: AIPLANE_LOG_FORMAT
  value: json
- name: AIPLANE_PII_KEY
  valueFrom:
    secretKeyRef:
      name: {{ include "aiplane.piiSecretName" .root }}
      key: {{ include "aiplane.piiSecretKey" .root }}
{{- with .root.Values.kafka.bootstrapServers }}
- name: AIPLANE_KAFKA_BOOTSTRAP_SERVERS
  value: {{ . | quote }}
{{- end }}
{{- with .root.Values.region }}
- name: AIPLANE_REGION
  value: {{ . | quote }}
{{- end }}
{{- if .root.Values.fromCluster.enabled }}
- name: AIPLANE_NAMESPACE
  value: {{ include "aiplane.followedNamespace" .root | quote }}
{{- end }}
{{ include "aiplane.tracingEnv" . }}
{{- end -}}

{{- define "aiplane.tracingEnv" -}}
- name: OTEL_SERVICE_NAME
  value: {{ printf "aiplane-%s" .component | quote }}
{{- if .root.Values.tracing.otlpEndpoint }}
- name: OTEL_TRACES_EXPORTER
  value: otlp
- name: OTEL_EXPORTER_OTLP_ENDPOINT
  value: {{ .root.Values.tracing.otlpEndpoint | quote }}
- name: OTEL_EXPORTER_OTLP_PROTOCOL
  value: {{ .root.Values.tracing.protocol | quote }}
- name: OTEL_TRACES_SAMPLER
  value: parentbased_traceidratio
- name: OTEL_TRACES_SAMPLER_ARG
  value: {{ .root.Values.tracing.sampleRatio | quote }}
{{- else }}
- name: OTEL_TRACES_EXPORTER
  value: none
{{- end }}
{{- end -}}

{{/* Spread over nodes and zones, and the shared scheduling values. */}}
{{- define "aiplane.scheduling" -}}
{{- if .root.Values.topologySpread.enabled }}
topologySpreadConstraints:
{{- range list "kubernetes.io/hostname" "topology.kubernetes.io/zone" }}
  - maxSkew: 1
    topologyKey: {{ . }}
    whenUnsatisfiable: {{ $.root.Values.topologySpread.whenUnsatisfiable }}
    labelSelector:
      matchLabels:
        {{- include "aiplane.selectorLabels" $ | nindent 8 }}
{{- end }}
{{- end }}
{{- with .root.Values.nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .root.Values.tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .root.Values.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end -}}

{{/* Whether the Prometheus Operator's kinds exist ("auto"), or what the user forced. */}}
{{- define "aiplane.useServiceMonitor" -}}
{{- $v := toString .Values.metrics.serviceMonitor -}}
{{- if eq $v "auto" -}}
{{- if .Capabilities.APIVersions.Has "monitoring.coreos.com/v1/ServiceMonitor" -}}true{{- end -}}
{{- else if eq $v "true" -}}true{{- end -}}
{{- end -}}

{{- define "aiplane.usePrometheusRule" -}}
{{- $v := toString .Values.alerts.prometheusRule -}}
{{- if eq $v "auto" -}}
{{- if .Capabilities.APIVersions.Has "monitoring.coreos.com/v1/PrometheusRule" -}}true{{- end -}}
{{- else if eq $v "true" -}}true{{- end -}}
{{- end -}}

{{/* The namespace the gateway and workers follow (Workflows, Models, Connectors, Policies). */}}
{{- define "aiplane.followedNamespace" -}}
{{- .Values.fromCluster.namespace | default .Release.Namespace -}}
{{- end -}}

{{/* Whether a component talks to the Kubernetes API (and so gets a token). */}}
{{- define "aiplane.needsToken" -}}
{{- if or (eq .component "operator") (and .root.Values.fromCluster.enabled (has .component (list "gateway" "worker"))) -}}true{{- end -}}
{{- end -}}

{{/* Egress to the Kubernetes API (its address is the cluster's: only the port is certain): a list to nest. */}}
{{- define "aiplane.apiServerEgress" -}}
- ports:
    {{- range .Values.operator.apiServer.ports }}
    - {protocol: TCP, port: {{ . }}}
    {{- end }}
  {{- with .Values.operator.apiServer.cidrs }}
  to:
    {{- range . }}
    - ipBlock: {cidr: {{ . }}}
    {{- end }}
  {{- end }}
{{- end -}}

{{/* Egress to the Kafka brokers (the configured ports, and addresses where known): a list to nest. */}}
{{- define "aiplane.kafkaEgress" -}}
- ports:
    {{- range .Values.kafka.ports }}
    - {protocol: TCP, port: {{ . }}}
    {{- end }}
  {{- with .Values.kafka.cidrs }}
  to:
    {{- range . }}
    - ipBlock: {cidr: {{ . }}}
    {{- end }}
  {{- end }}
{{- end -}}

{{/* Egress rules to the store (the bundled PostgreSQL pod, or the configured port and CIDRs): a list to nest. */}}
{{- define "aiplane.storeEgress" -}}
{{- if .Values.postgresql.bundled.enabled }}
- to:
    - podSelector:
        matchLabels:
          {{- include "aiplane.selectorLabels" (dict "root" . "component" "postgresql") | nindent 10 }}
  ports:
    - {protocol: TCP, port: 5432}
{{- else }}
- ports:
    - {protocol: TCP, port: {{ .Values.postgresql.port }}}
  {{- with .Values.postgresql.cidrs }}
  to:
    {{- range . }}
    - ipBlock: {cidr: {{ . }}}
    {{- end }}
  {{- end }}
{{- end }}
{{- end -}}

{{/* Prometheus as a NetworkPolicy peer (metrics.scraperNamespaceSelector, scraperPodSelector): a list to nest. */}}
{{- define "aiplane.scraperPeer" -}}
- namespaceSelector:
    {{- with .Values.metrics.scraperNamespaceSelector }}
    matchLabels:
      {{- toYaml . | nindent 6 }}
    {{- else }} {}
    {{- end }}
  {{- with .Values.metrics.scraperPodSelector }}
  podSelector:
    matchLabels:
      {{- toYaml . | nindent 6 }}
  {{- end }}
{{- end -}}

{{/* The OTLP collector's port: tracing.otlpEndpoint's, else its scheme's (the exporter uses the URL as given). */}}
{{- define "aiplane.otlpPort" -}}
{{- $url := urlParse .Values.tracing.otlpEndpoint -}}
{{- (split ":" $url.host)._1 | default (ternary "443" "80" (eq $url.scheme "https")) -}}
{{- end -}}
