{{/*
Names, labels and the pieces every els-bridge pod shares (configuration, credentials,
environment), so that the worker, the replay Job and the simulator cannot drift apart.
*/}}

{{- define "els-bridge.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Release name + chart name, unless the release name already contains it; at most
52 characters so that suffixes such as "-simulator" stay within 63. */}}
{{- define "els-bridge.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 52 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 52 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 52 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "els-bridge.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels of every resource. */}}
{{- define "els-bridge.labels" -}}
helm.sh/chart: {{ include "els-bridge.chart" . }}
{{ include "els-bridge.selectorLabels" . }}
app.kubernetes.io/version: {{ .Values.image.tag | default .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: els-bridge
{{- end }}

{{/* Selector labels (without the component, which each workload adds). */}}
{{- define "els-bridge.selectorLabels" -}}
app.kubernetes.io/name: {{ include "els-bridge.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "els-bridge.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "els-bridge.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "els-bridge.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (.Values.image.tag | default .Chart.AppVersion) }}
{{- end }}
{{- end }}

{{/* The Secret holding the credentials: the user's or the chart's. */}}
{{- define "els-bridge.secretName" -}}
{{- .Values.credentials.existingSecret | default (printf "%s-credentials" (include "els-bridge.fullname" .)) }}
{{- end }}

{{- define "els-bridge.simulatorName" -}}
{{- printf "%s-simulator" (include "els-bridge.fullname" .) }}
{{- end }}

{{/* Where the platform is: the simulator of this release when it is enabled. */}}
{{- define "els-bridge.platformUrl" -}}
{{- if .Values.simulator.enabled }}
{{- printf "http://%s:%d/api/commonInterfaca" (include "els-bridge.simulatorName" .) (int .Values.simulator.port) }}
{{- else }}
{{- required "config.platform.url is required: the provincial gateway's interface URL (or set simulator.enabled=true for staging)" .Values.config.platform.url }}
{{- end }}
{{- end }}

{{- define "els-bridge.configPath" -}}/etc/els-bridge/els-bridge.toml{{- end }}
{{- define "els-bridge.secretsDir" -}}/etc/els-bridge/secrets{{- end }}
{{- define "els-bridge.metricsPort" -}}9464{{- end }}

{{/*
The configuration file (TOML). Scalars are written with toJson, whose strings, numbers
and booleans are valid TOML. Secrets are referenced as files, never written here.
*/}}
{{- define "els-bridge.configToml" -}}
# Rendered by the els-bridge Helm chart (release {{ .Release.Name }}); edit the chart's values instead.
# Secrets: auth codes and CSB secret keys are files under {{ include "els-bridge.secretsDir" . }},
# the broker URL comes from the environment (ELS_BRIDGE__AMQP__URL).
{{- $config := deepCopy .Values.config }}
{{- $platform := get $config "platform" | default dict }}
{{- $_ := set $platform "url" (include "els-bridge.platformUrl" .) }}
{{- $_ := set $config "platform" $platform }}
{{- $_ := set $config "http" (dict "listen" (printf "0.0.0.0:%s" (include "els-bridge.metricsPort" .))) }}
{{- range $section := keys $config | sortAlpha }}
{{- $values := get $config $section }}

[{{ $section }}]
{{- range $key, $value := $values }}
{{- if not (kindIs "invalid" $value) }}
{{ $key }} = {{ toJson $value }}
{{- end }}
{{- end }}
{{- end }}
{{- $secretsDir := include "els-bridge.secretsDir" . }}
{{- range .Values.institutions }}

[[institutions]]
{{- range $key, $value := . }}
{{ $key }} = {{ toJson $value }}
{{- end }}
auth_code_file = {{ printf "%s/%s/auth_code" $secretsDir .fixmedins_code | toJson }}
csb_secret_key_file = {{ printf "%s/%s/csb_secret_key" $secretsDir .fixmedins_code | toJson }}
{{- end }}
{{- with .Values.extraConfig }}

{{ . }}
{{- end }}
{{- end }}

{{/* Volumes of every els-bridge pod: the configuration, the institutions' secrets, /tmp. */}}
{{- define "els-bridge.volumes" -}}
- name: config
  configMap:
    name: {{ include "els-bridge.fullname" . }}
- name: credentials
  secret:
    secretName: {{ include "els-bridge.secretName" . }}
    defaultMode: 0440
    items:
      {{- range .Values.institutions }}
      - key: {{ printf "%s.auth_code" .fixmedins_code }}
        path: {{ printf "%s/auth_code" .fixmedins_code }}
      - key: {{ printf "%s.csb_secret_key" .fixmedins_code }}
        path: {{ printf "%s/csb_secret_key" .fixmedins_code }}
      {{- end }}
- name: tmp
  emptyDir:
    medium: Memory
    sizeLimit: 16Mi
{{- with .Values.extraVolumes }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{- define "els-bridge.volumeMounts" -}}
- name: config
  mountPath: {{ include "els-bridge.configPath" . }}
  subPath: els-bridge.toml
  readOnly: true
- name: credentials
  mountPath: {{ include "els-bridge.secretsDir" . }}
  readOnly: true
- name: tmp
  mountPath: /tmp
{{- with .Values.extraVolumeMounts }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* Environment of every els-bridge container; "amqp" adds the broker URL. */}}
{{- define "els-bridge.env" -}}
{{- $root := .root -}}
- name: ELS_BRIDGE_CONFIG
  value: {{ include "els-bridge.configPath" $root }}
- name: ELS_BRIDGE_LOG_FORMAT
  value: {{ $root.Values.logFormat | quote }}
- name: RUST_LOG
  value: {{ $root.Values.logLevel | quote }}
{{- if .amqp }}
- name: ELS_BRIDGE__AMQP__URL
  valueFrom:
    secretKeyRef:
      name: {{ include "els-bridge.secretName" $root }}
      key: amqp-url
{{- end }}
{{- if $root.Values.otel.endpoint }}
- name: POD_NAME
  valueFrom:
    fieldRef:
      fieldPath: metadata.name
- name: POD_NAMESPACE
  valueFrom:
    fieldRef:
      fieldPath: metadata.namespace
- name: OTEL_EXPORTER_OTLP_ENDPOINT
  value: {{ $root.Values.otel.endpoint | quote }}
- name: OTEL_SERVICE_NAME
  value: {{ $root.Values.otel.serviceName | quote }}
{{- $attributes := "k8s.pod.name=$(POD_NAME),k8s.namespace.name=$(POD_NAMESPACE),service.instance.id=$(POD_NAME)" }}
{{- with $root.Values.otel.resourceAttributes }}
{{- $attributes = printf "%s,%s" $attributes . }}
{{- end }}
- name: OTEL_RESOURCE_ATTRIBUTES
  value: {{ $attributes | quote }}
{{- end }}
{{- with $root.Values.extraEnv }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* Pod-level settings shared by every els-bridge pod. */}}
{{- define "els-bridge.podCommon" -}}
serviceAccountName: {{ include "els-bridge.serviceAccountName" . }}
automountServiceAccountToken: false
enableServiceLinks: false
{{- with .Values.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
securityContext:
  {{- toYaml .Values.podSecurityContext | nindent 2 }}
{{- with .Values.priorityClassName }}
priorityClassName: {{ . }}
{{- end }}
{{- with .Values.nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .Values.tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end }}

{{/* Checksums that roll the pods when the configuration or the chart's Secret changes. */}}
{{- define "els-bridge.checksums" -}}
checksum/config: {{ include "els-bridge.configToml" . | sha256sum }}
{{- if not .Values.credentials.existingSecret }}
checksum/credentials: {{ include (print .Template.BasePath "/secret.yaml") . | sha256sum }}
{{- end }}
{{- end }}
