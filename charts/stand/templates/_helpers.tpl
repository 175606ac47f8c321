{{/*
Names. Each stand lives in a namespace of its own, so names only need to be unique within the release:
<release>-<suffix>, with the release part cut so the whole stays a valid DNS label (≤ 63 characters).
Called with (dict "root" $ "suffix" "mock-payments"); "stand.fullname" is the app's own name.
*/}}
{{- define "stand.fullname" -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "stand.name" -}}
{{- $max := sub 62 (len .suffix) | int -}}
{{- printf "%s-%s" (.root.Release.Name | trunc $max | trimSuffix "-") .suffix -}}
{{- end -}}

{{/* The app's image reference. */}}
{{- define "stand.image" -}}
{{- if .Values.image.digest -}}
{{- /* draftd pins the digest its image step found: what was checked is what runs. */ -}}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest -}}
{{- else -}}
{{- printf "%s:%s" .Values.image.repository (.Values.image.tag | default .Chart.AppVersion | toString) -}}
{{- end -}}
{{- end -}}

{{/*
Labels of every resource, called with (dict "root" $ "component" "app"). draftd finds, reports on and
cleans up a stand's resources by draftd.io/stand and draftd.io/project.
*/}}
{{- define "stand.labels" -}}
{{- $root := .root -}}
helm.sh/chart: {{ printf "%s-%s" $root.Chart.Name $root.Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "stand.selectorLabels" . }}
app.kubernetes.io/version: {{ regexReplaceAll "[-_.]+$" ($root.Values.image.tag | default $root.Chart.AppVersion | toString | trunc 63) "" | quote }}
app.kubernetes.io/managed-by: {{ $root.Release.Service }}
app.kubernetes.io/part-of: draftd-stand
draftd.io/stand: {{ $root.Values.stand.id | toString | quote }}
draftd.io/project: {{ $root.Values.stand.project | toString | quote }}
{{- end -}}

{{- define "stand.selectorLabels" -}}
app.kubernetes.io/name: {{ .root.Chart.Name }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{/*
metadata.labels and metadata.annotations (extra `annotations`, plus draftd.io/expires-at when the stand has
an expiry), for a top-level metadata. Called with (dict "root" $ "component" "app" ["annotations" map]).
*/}}
{{- define "stand.metadata" -}}
labels:
  {{- include "stand.labels" . | nindent 2 }}
{{- $annotations := merge (dict) (.annotations | default dict) }}
{{- with .root.Values.stand.expiresAt }}
{{- $_ := set $annotations "draftd.io/expires-at" (toString .) }}
{{- end }}
{{- with $annotations }}
annotations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end -}}

{{/* The app's environment: mock URLs first, then plain `env`. */}}
{{- define "stand.env" -}}
{{- $root := . -}}
{{- range $name, $mock := .Values.mocks }}
{{- if or $mock.enabled (eq (toString $root.Values.mocksOnly) "true") }}
- name: {{ $mock.envVar | default (printf "%s_URL" ($name | upper | replace "-" "_")) }}
  value: {{ printf "http://%s:8080" (include "stand.name" (dict "root" $root "suffix" (printf "mock-%s" $name))) | quote }}
{{- end }}
{{- end }}
{{- range $key, $value := .Values.env }}
- name: {{ $key }}
  value: {{ $value | toString | quote }}
{{- end }}
{{- end -}}

{{- define "stand.envFrom" -}}
{{- range .Values.secretRefs }}
- secretRef:
    name: {{ . | quote }}
    # A stand without [postgres] or [vault] gets no such Secret; the app starts without those values.
    optional: true
{{- end }}
{{- end -}}

{{/* Pod-level settings every pod of the app (Deployment and Jobs) shares. */}}
{{- define "stand.podCommon" -}}
automountServiceAccountToken: false
{{- with .Values.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
securityContext:
  {{- toYaml .Values.podSecurityContext | nindent 2 }}
{{- with .Values.nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .Values.tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end -}}

{{- define "stand.tmpVolume" -}}
- name: tmp
  emptyDir:
    sizeLimit: {{ .Values.tmpSizeLimit }}
{{- end -}}
