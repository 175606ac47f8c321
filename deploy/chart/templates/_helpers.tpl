{{/*
Names: <release>-<chart>, or just <release> when it already contains the chart's name, so a release
called `draftd` gives the names of deploy/rbac.yaml and deploy/reaper-cronjob.yaml. Cut to 63
characters, a DNS label.
*/}}
{{- define "draftd.name" -}}
{{- .Values.nameOverride | default .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "draftd.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := .Values.nameOverride | default .Chart.Name -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "draftd.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- .Values.serviceAccount.name | default (include "draftd.fullname" .) -}}
{{- else -}}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* The ClusterRole draftd binds inside each stand namespace; also the `bind` rule's only resourceName. */}}
{{- define "draftd.standRole" -}}
{{- printf "%s-stand" (include "draftd.fullname" .) -}}
{{- end -}}

{{/* A CronJob's name may have 52 characters: its Jobs get an 11-character suffix. */}}
{{- define "draftd.reaperName" -}}
{{- printf "%s-reaper" (include "draftd.fullname" . | trunc 45 | trimSuffix "-") -}}
{{- end -}}

{{- define "draftd.configMapName" -}}
{{- printf "%s-config" (include "draftd.fullname" .) -}}
{{- end -}}

{{- define "draftd.image" -}}
{{- if .Values.image.digest -}}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest -}}
{{- else -}}
{{- printf "%s:%s" .Values.image.repository (.Values.image.tag | default .Chart.AppVersion | toString) -}}
{{- end -}}
{{- end -}}

{{- define "draftd.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
app.kubernetes.io/name: {{ include "draftd.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Values.image.tag | default .Chart.AppVersion | toString | trunc 63 | trimSuffix "-" | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{/* Called with (dict "root" $ "component" "server"|"reaper"). */}}
{{- define "draftd.selectorLabels" -}}
app.kubernetes.io/name: {{ include "draftd.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{/*
Environment shared by serve and the reaper: the config file's path, logging, the settings the chart
owns (they override the file), then every secret by reference only, then the user's plain extras.
*/}}
{{- define "draftd.env" -}}
- name: DRAFTD_CONFIG
  value: /etc/draftd/draftd.toml
- name: DRAFTD_LOG_FORMAT
  value: {{ .Values.logFormat | quote }}
{{- with .Values.logLevel }}
- name: RUST_LOG
  value: {{ . | quote }}
{{- end }}
- name: DRAFTD_LISTEN
  value: {{ printf "0.0.0.0:%d" (int .Values.containerPort) | quote }}
- name: DRAFTD_CLUSTER__SERVICE_ACCOUNT
  value: {{ printf "%s/%s" .Release.Namespace (include "draftd.serviceAccountName" .) | quote }}
{{- if .Values.rbac.create }}
- name: DRAFTD_CLUSTER__STAND_ROLE
  value: {{ include "draftd.standRole" . | quote }}
{{- end }}
{{- $default := .Values.secrets.existingSecret }}
{{- range .Values.secrets.env }}
- name: {{ required "secrets.env[].name is required" .name }}
  valueFrom:
    secretKeyRef:
      name: {{ .secret | default $default | required (printf "secrets.env %s: no `secret` and no secrets.existingSecret" .name) }}
      key: {{ required (printf "secrets.env %s: `key` is required" .name) .key }}
      {{- if .optional }}
      optional: true
      {{- end }}
{{- end }}
{{- with .Values.extraEnv }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* Mounts shared by serve and the reaper. */}}
{{- define "draftd.volumeMounts" -}}
- name: config
  mountPath: /etc/draftd
  readOnly: true
{{- if .Values.secrets.files.existingSecret }}
- name: files
  mountPath: /var/run/secrets/draftd
  readOnly: true
{{- end }}
# The root filesystem is read-only; helm and the kube client keep their caches here (the image's
# HELM_*_HOME and KUBECACHEDIR point under /tmp).
- name: tmp
  mountPath: /tmp
{{- end -}}

{{/* Volumes shared by serve and the reaper; called with (dict "root" $ "tmpSizeLimit" "16Mi"). */}}
{{- define "draftd.volumes" -}}
- name: config
  configMap:
    name: {{ include "draftd.configMapName" .root }}
{{- with .root.Values.secrets.files.existingSecret }}
- name: files
  secret:
    secretName: {{ . }}
{{- end }}
- name: tmp
  emptyDir:
    sizeLimit: {{ .tmpSizeLimit }}
{{- end -}}
