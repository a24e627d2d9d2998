{{/* Names, labels and the values several templates share. */}}

{{- define "headroom.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Release-qualified name, at most 54 characters so "-headless" and "-router" still fit in 63. */}}
{{- define "headroom.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 54 | trimSuffix "-" }}
{{- else if contains (include "headroom.name" .) .Release.Name }}
{{- .Release.Name | trunc 54 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name (include "headroom.name" .) | trunc 54 | trimSuffix "-" }}
{{- end }}
{{- end }}

{{- define "headroom.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
app.kubernetes.io/name: {{ include "headroom.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{/* The Triton replicas. */}}
{{- define "headroom.selectorLabels" -}}
app.kubernetes.io/name: {{ include "headroom.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: triton
{{- end }}

{{- define "headroom.routerSelectorLabels" -}}
app.kubernetes.io/name: {{ include "headroom.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: router
{{- end }}

{{- define "headroom.headlessName" -}}
{{- printf "%s-headless" (include "headroom.fullname" .) }}
{{- end }}

{{- define "headroom.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "headroom.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "headroom.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{/* Triton's URL of the repository: s3://host:port/bucket/path, or s3://bucket/path on AWS. */}}
{{- define "headroom.repositoryUrl" -}}
{{- $bucket := required "s3.bucket is required" .Values.s3.bucket -}}
{{- $location := trimAll "/" (printf "%s/%s" $bucket (trimAll "/" (default "" .Values.s3.path))) -}}
{{- if .Values.s3.endpoint }}
{{- printf "s3://%s/%s" (trimSuffix "/" .Values.s3.endpoint) $location }}
{{- else }}
{{- printf "s3://%s" $location }}
{{- end }}
{{- end }}

{{- define "headroom.s3SecretName" -}}
{{- default (printf "%s-s3" (include "headroom.fullname" .)) .Values.s3.credentials.existingSecret }}
{{- end }}

{{- define "headroom.adminKeySecretName" -}}
{{- default (printf "%s-admin-key" (include "headroom.fullname" .)) .Values.adminKey.existingSecret }}
{{- end }}

{{/* The store's credentials and the admin key, from their Secrets: Triton and the reconciler alike. */}}
{{- define "headroom.secretEnv" -}}
{{- range $key := list "AWS_ACCESS_KEY_ID" "AWS_SECRET_ACCESS_KEY" "AWS_DEFAULT_REGION" }}
- name: {{ $key }}
  valueFrom:
    secretKeyRef:
      name: {{ include "headroom.s3SecretName" $ }}
      key: {{ $key }}
{{- end }}
- name: HEADROOM_ADMIN_KEY
  valueFrom:
    secretKeyRef:
      name: {{ include "headroom.adminKeySecretName" . }}
      key: admin-key
{{- end }}

{{/* Triton's restricted API groups (docs/security.md); the key is expanded by the kubelet from the env. */}}
{{- define "headroom.restrictedApis" -}}
model-repository,model-config,shared-memory,statistics,trace,logging:admin-key=$(HEADROOM_ADMIN_KEY)
{{- end }}
