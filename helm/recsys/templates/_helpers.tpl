{{/* Chart name, truncated to the 63 characters of a DNS label. */}}
{{- define "recsys.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Fully qualified app name. 40 characters at most: KubeRay derives longer names (RayCluster
<name>-<suffix>, <cluster>-head-svc, worker pods) from a RayService's name.
*/}}
{{- define "recsys.fullname" -}}
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

{{- define "recsys.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Standard labels (app.kubernetes.io/*) on every object. */}}
{{- define "recsys.labels" -}}
helm.sh/chart: {{ include "recsys.chart" . }}
{{ include "recsys.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: recsys
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{- define "recsys.selectorLabels" -}}
app.kubernetes.io/name: {{ include "recsys.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/* Selector labels of one component: (dict "ctx" $ "component" "updater"). */}}
{{- define "recsys.componentSelectorLabels" -}}
{{ include "recsys.selectorLabels" .ctx }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{/* Labels of one component's objects and pods. */}}
{{- define "recsys.componentLabels" -}}
{{ include "recsys.labels" .ctx }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{/* Pod template metadata of one component: labels (plus podLabels) and annotations. */}}
{{- define "recsys.podMetadata" -}}
labels:
  {{- include "recsys.componentLabels" . | nindent 2 }}
  {{- with .ctx.Values.podLabels }}
  {{- toYaml . | nindent 2 }}
  {{- end }}
annotations:
  checksum/config: {{ include (print .ctx.Template.BasePath "/configmap.yaml") .ctx | sha256sum }}
  {{- with .ctx.Values.podAnnotations }}
  {{- toYaml . | nindent 2 }}
  {{- end }}
{{- end }}

{{- define "recsys.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "recsys.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "recsys.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{- define "recsys.artifactsRoot" -}}
{{- printf "%s/%s" (trimSuffix "/" .Values.storage.mountPath) .Values.storage.artifactsDir }}
{{- end }}

{{- define "recsys.objectStoreArtifactsUrl" -}}
{{- printf "%s/artifacts" (trimSuffix "/" .Values.storage.objectStore.url) }}
{{- end }}

{{/*
Checks that values.schema.json cannot express (it cannot compare two values). Included by
the ConfigMap, which every mode renders, so a failure stops the whole release.
*/}}
{{- define "recsys.validate" -}}
{{- if and .Values.updater.enabled (gt (int .Values.updater.replicas) (int .Values.stream.partitions)) }}
{{- fail (printf "updater.replicas (%d) must not exceed stream.partitions (%d): each updater replica consumes at least one partition of the impressions and feedback topics, extra replicas would sit idle" (int .Values.updater.replicas) (int .Values.stream.partitions)) }}
{{- end }}
{{- if and .Values.updater.enabled (not .Values.stream.bootstrap) }}
{{- fail "updater.enabled needs stream.bootstrap (the Kafka bootstrap servers): `recsys updater` refuses to start without RECSYS_STREAM__BOOTSTRAP" }}
{{- end }}
{{- if and (not .Values.store.existingSecret) (regexMatch "^[a-z]+://[^/]*@" .Values.store.url) }}
{{- fail "store.url carries credentials: put the URL in a Secret and set store.existingSecret (and store.existingSecretKey) instead; the ConfigMap is not secret" }}
{{- end }}
{{- if and (not .Values.store.existingSecret) (hasPrefix "memory://" .Values.store.url) }}
{{- fail "store.url memory:// keeps user state inside one process; pods need a shared Redis (redis://, rediss:// or unix://)" }}
{{- end }}
{{- if and .Values.auth.protect (not .Values.auth.existingSecret) }}
{{- fail "auth.protect needs API keys: create a Secret with them and set auth.existingSecret (and auth.clientKeysKey)" }}
{{- end }}
{{- if and (eq .Values.storage.type "objectStore") (not .Values.storage.objectStore.url) }}
{{- fail "storage.type objectStore needs storage.objectStore.url (e.g. s3://bucket/prefix)" }}
{{- end }}
{{- if and .Values.rayService.worker (gt (int .Values.rayService.worker.minReplicas) (int .Values.rayService.worker.maxReplicas)) }}
{{- fail (printf "rayService.worker.minReplicas (%d) exceeds rayService.worker.maxReplicas (%d)" (int .Values.rayService.worker.minReplicas) (int .Values.rayService.worker.maxReplicas)) }}
{{- end }}
{{- $as := .Values.rayService.serveConfig.autoscaling }}
{{- if gt (int $as.minReplicas) (int $as.maxReplicas) }}
{{- fail (printf "rayService.serveConfig.autoscaling.minReplicas (%d) exceeds maxReplicas (%d)" (int $as.minReplicas) (int $as.maxReplicas)) }}
{{- end }}
{{- end }}

{{/* Env vars of every recsys container: HOME on the writable /tmp, secrets by reference. */}}
{{- define "recsys.env" -}}
- name: HOME
  value: /tmp
{{- if .Values.store.existingSecret }}
- name: RECSYS_STORE__URL
  valueFrom:
    secretKeyRef:
      name: {{ .Values.store.existingSecret }}
      key: {{ .Values.store.existingSecretKey }}
{{- end }}
{{- range .Values.extraSecretEnv }}
- name: {{ .name }}
  valueFrom:
    secretKeyRef:
      name: {{ .secretName }}
      key: {{ .key }}
{{- end }}
{{- end }}

{{- define "recsys.envFrom" -}}
- configMapRef:
    name: {{ include "recsys.fullname" . }}
{{- range .Values.extraEnvFromSecrets }}
- secretRef:
    name: {{ . }}
{{- end }}
{{- if and (eq .Values.storage.type "objectStore") .Values.storage.objectStore.existingSecret }}
- secretRef:
    name: {{ .Values.storage.objectStore.existingSecret }}
{{- end }}
{{- end }}

{{- define "recsys.securityContext" -}}
{{ toYaml .Values.securityContext }}
{{- end }}

{{/* Where a serving pod finds the API keys Secret (auth.existingSecret). */}}
{{- define "recsys.apiKeysDir" -}}
/etc/recsys/api-keys
{{- end }}

{{/* Volumes of a recsys pod: (dict "ctx" $ "shm" true "keys" true); keys: the API keys
Secret, for serving pods only. */}}
{{- define "recsys.volumes" -}}
{{- $v := .ctx.Values -}}
- name: tmp
  emptyDir:
    sizeLimit: {{ $v.tmpSizeLimit }}
{{- if .shm }}
- name: dshm
  emptyDir:
    medium: Memory
    sizeLimit: {{ $v.shmSizeLimit }}
{{- end }}
{{- if and .keys $v.auth.existingSecret }}
- name: api-keys
  secret:
    secretName: {{ $v.auth.existingSecret }}
    defaultMode: 0400
{{- end }}
- name: data
{{- if eq $v.storage.type "pvc" }}
  persistentVolumeClaim:
    claimName: {{ default (printf "%s-data" (include "recsys.fullname" .ctx)) $v.storage.pvc.existingClaim }}
{{- else }}
  emptyDir:
    sizeLimit: {{ $v.storage.objectStore.scratchSizeLimit }}
- name: scripts
  configMap:
    name: {{ include "recsys.fullname" .ctx }}-scripts
    defaultMode: 0444
{{- end }}
{{- end }}

{{- define "recsys.volumeMounts" -}}
- name: tmp
  mountPath: /tmp
{{- if .shm }}
- name: dshm
  mountPath: /dev/shm
{{- end }}
{{- if and .keys .ctx.Values.auth.existingSecret }}
- name: api-keys
  mountPath: {{ include "recsys.apiKeysDir" .ctx }}
  readOnly: true
{{- end }}
- name: data
  mountPath: {{ .ctx.Values.storage.mountPath }}
{{- if eq .ctx.Values.storage.type "objectStore" }}
- name: scripts
  mountPath: /opt/recsys-chart
  readOnly: true
{{- end }}
{{- end }}

{{/* The chart's artifact mirror: python /opt/recsys-chart/sync_artifacts.py <args>. */}}
{{- define "recsys.syncCommand" -}}
python /opt/recsys-chart/sync_artifacts.py {{ .direction }} {{ include "recsys.objectStoreArtifactsUrl" .ctx | quote }} {{ include "recsys.artifactsRoot" .ctx | quote }}
{{- end }}

{{/*
Object-store mode: an init container that mirrors the artifacts before the app starts.
(dict "ctx" $)
*/}}
{{- define "recsys.objectStoreInitContainers" -}}
{{- $v := .ctx.Values }}
{{- if eq $v.storage.type "objectStore" -}}
- name: fetch-artifacts
  image: {{ include "recsys.image" .ctx }}
  imagePullPolicy: {{ $v.image.pullPolicy }}
  command:
    - python
    - /opt/recsys-chart/sync_artifacts.py
    - download
    - {{ include "recsys.objectStoreArtifactsUrl" .ctx | quote }}
    - {{ include "recsys.artifactsRoot" .ctx | quote }}
  env:
    {{- include "recsys.env" .ctx | nindent 4 }}
  envFrom:
    {{- include "recsys.envFrom" .ctx | nindent 4 }}
  resources:
    {{- toYaml $v.storage.objectStore.resources | nindent 4 }}
  securityContext:
    {{- include "recsys.securityContext" .ctx | nindent 4 }}
  volumeMounts:
    {{- include "recsys.volumeMounts" (dict "ctx" .ctx) | nindent 4 }}
{{- end }}
{{- end }}

{{/* Object-store mode: a sidecar that mirrors new versions every syncIntervalSeconds. */}}
{{- define "recsys.objectStoreSidecars" -}}
{{- $v := .ctx.Values }}
{{- if and (eq $v.storage.type "objectStore") (gt (int $v.storage.objectStore.syncIntervalSeconds) 0) -}}
- name: sync-artifacts
  image: {{ include "recsys.image" .ctx }}
  imagePullPolicy: {{ $v.image.pullPolicy }}
  command:
    - python
    - /opt/recsys-chart/sync_artifacts.py
    - download
    - {{ include "recsys.objectStoreArtifactsUrl" .ctx | quote }}
    - {{ include "recsys.artifactsRoot" .ctx | quote }}
    - --every
    - {{ $v.storage.objectStore.syncIntervalSeconds | quote }}
  env:
    {{- include "recsys.env" .ctx | nindent 4 }}
  envFrom:
    {{- include "recsys.envFrom" .ctx | nindent 4 }}
  resources:
    {{- toYaml $v.storage.objectStore.resources | nindent 4 }}
  securityContext:
    {{- include "recsys.securityContext" .ctx | nindent 4 }}
  volumeMounts:
    {{- include "recsys.volumeMounts" (dict "ctx" .ctx) | nindent 4 }}
{{- end }}
{{- end }}

{{/* An HTTP probe from probes.<kind>: (dict "probe" .Values.probes.liveness "port" "http"). */}}
{{- define "recsys.httpProbe" -}}
httpGet:
  path: {{ .probe.path }}
  port: {{ .port }}
periodSeconds: {{ .probe.periodSeconds }}
timeoutSeconds: {{ .probe.timeoutSeconds }}
failureThreshold: {{ .probe.failureThreshold }}
{{- end }}

{{- define "recsys.podScheduling" -}}
{{- with .Values.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .Values.nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .Values.tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .Values.affinity }}
affinity:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end }}
