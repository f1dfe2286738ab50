{{/* Names and labels. */}}
{{- define "tally.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 50 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 50 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "tally.labels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{/* Selector labels of one component: (dict "root" $ "component" "ingest"). */}}
{{- define "tally.selector" -}}
app.kubernetes.io/name: {{ .root.Chart.Name }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "tally.image" -}}
{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end -}}

{{- define "tally.secretName" -}}
{{- if .Values.existingSecret -}}{{ .Values.existingSecret }}{{- else -}}{{ include "tally.fullname" . }}-env{{- end -}}
{{- end -}}

{{/*
The environment of every Tally container: the shared settings, the
component's admin listener (and public one), then extraEnv; secrets come
from the Secret through envFrom.
(dict "root" $ "component" "ingest" "admin" 9080 "listen" 8080)
*/}}
{{- define "tally.env" -}}
{{- $v := .root.Values -}}
- name: TALLY_KAFKA__BROKERS
  value: {{ $v.kafka.brokers | quote }}
# Topics come from the hook Job (or the operator), never from a service.
- name: TALLY_KAFKA__CREATE_TOPICS
  value: "false"
- name: TALLY_KAFKA__TOPICS__VIEWS_PARTITIONS
  value: {{ $v.kafka.viewsPartitions | quote }}
- name: TALLY_KAFKA__TOPICS__COUNTS_PARTITIONS
  value: {{ $v.kafka.countsPartitions | quote }}
- name: TALLY_LOG__FORMAT
  value: json
- name: TALLY_SHUTDOWN__DRAIN_TIMEOUT
  value: {{ printf "%ds" (int $v.drainTimeoutSeconds) | quote }}
- name: TALLY_STORE__BACKEND
  value: scylla
- name: TALLY_STORE__SCYLLA__NODES
  value: {{ $v.store.scyllaNodes | toJson | quote }}
- name: TALLY_STORE__SCYLLA__CONSISTENCY
  value: {{ $v.store.consistency | quote }}
{{- with $v.store.localDatacenter }}
- name: TALLY_STORE__SCYLLA__LOCAL_DATACENTER
  value: {{ . | quote }}
{{- end }}
- name: TALLY_CACHE__REDIS_URL
  value: {{ $v.redisUrl | quote }}
- name: TALLY_{{ upper .component }}__ADMIN_LISTEN
  value: {{ printf "0.0.0.0:%d" (int .admin) | quote }}
{{- if .listen }}
- name: TALLY_{{ upper .component }}__LISTEN
  value: {{ printf "0.0.0.0:%d" (int .listen) | quote }}
{{- end }}
{{- range $name, $value := $v.extraEnv }}
- name: {{ $name }}
  value: {{ $value | quote }}
{{- end }}
{{- end -}}

{{/*
One Tally container. (dict "root" $ "component" "ingest" "values" .Values.ingest
"listen" 8080 "liveness" <probe yaml or "">)
*/}}
{{- define "tally.container" -}}
{{- $v := .root.Values -}}
- name: {{ .component }}
  image: {{ include "tally.image" .root | quote }}
  imagePullPolicy: {{ $v.image.pullPolicy }}
  args: [{{ .component | quote }}]
  env:
    {{- include "tally.env" (dict "root" .root "component" .component "admin" .values.adminPort "listen" .listen) | nindent 4 }}
    {{- with .extraEnv }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
  envFrom:
    - secretRef:
        name: {{ include "tally.secretName" .root }}
        optional: true
  ports:
    - name: admin
      containerPort: {{ .values.adminPort }}
    {{- if .listen }}
    - name: http
      containerPort: {{ .listen }}
    {{- end }}
  readinessProbe:
    httpGet: {path: /readyz, port: admin}
    periodSeconds: 5
    failureThreshold: 3
  livenessProbe:
    {{- if .liveness }}
    {{- .liveness | nindent 4 }}
    {{- else }}
    httpGet: {path: /healthz, port: admin}
    {{- end }}
    periodSeconds: 10
    timeoutSeconds: 5
    failureThreshold: 6
  startupProbe:
    httpGet: {path: /healthz, port: admin}
    periodSeconds: 5
    failureThreshold: {{ div (.startupSeconds | default 120) 5 }}
  lifecycle:
    # Endpoints and load balancers stop sending before the drain starts.
    preStop:
      exec:
        command: ["sleep", {{ $v.preStopSeconds | quote }}]
  resources:
    {{- toYaml .values.resources | nindent 4 }}
  securityContext:
    {{- toYaml $v.containerSecurityContext | nindent 4 }}
  volumeMounts:
    - name: tmp
      mountPath: /tmp
    {{- with .mounts }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
{{- end -}}

{{/* Pod-level settings shared by every Tally pod. */}}
{{- define "tally.podSpec" -}}
terminationGracePeriodSeconds: {{ .Values.terminationGracePeriodSeconds }}
securityContext:
  {{- toYaml .Values.podSecurityContext | nindent 2 }}
automountServiceAccountToken: false
{{- end -}}

{{/* A Service for a component: (dict "root" $ "component" "ingest" "ports" (list ...) "headless" false) */}}
{{- define "tally.service" -}}
apiVersion: v1
kind: Service
metadata:
  name: {{ include "tally.fullname" .root }}-{{ .component }}
  labels:
    {{- include "tally.labels" .root | nindent 4 }}
    app.kubernetes.io/component: {{ .component }}
spec:
  {{- if .headless }}
  clusterIP: None
  {{- end }}
  selector:
    {{- include "tally.selector" . | nindent 4 }}
  ports:
    - name: admin
      port: {{ .values.adminPort }}
      targetPort: admin
    {{- if .listen }}
    - name: http
      port: {{ .listen }}
      targetPort: http
    {{- end }}
{{- end -}}

{{/* A PodDisruptionBudget: (dict "root" $ "component" "ingest" "pdb" .Values.ingest.pdb) */}}
{{- define "tally.pdb" -}}
apiVersion: policy/v1
kind: PodDisruptionBudget
metadata:
  name: {{ include "tally.fullname" .root }}-{{ .component }}
  labels:
    {{- include "tally.labels" .root | nindent 4 }}
    app.kubernetes.io/component: {{ .component }}
spec:
  {{- toYaml .pdb | nindent 2 }}
  selector:
    matchLabels:
      {{- include "tally.selector" . | nindent 6 }}
{{- end -}}

{{/* A KEDA ScaledObject on a consumer group's lag:
(dict "root" $ "component" "counter" "kind" "StatefulSet" "keda" .Values.counter.keda
"group" "tally-counter" "topic" "tally.views" "partitions" 12) */}}
{{- define "tally.scaledObject" -}}
{{- if gt (int .keda.maxReplicas) (int .partitions) -}}
{{- fail (printf "%s.keda.maxReplicas (%d) is above the %d partitions of %s: an extra member would own none" .component (int .keda.maxReplicas) (int .partitions) .topic) -}}
{{- end -}}
apiVersion: keda.sh/v1alpha1
kind: ScaledObject
metadata:
  name: {{ include "tally.fullname" .root }}-{{ .component }}
  labels:
    {{- include "tally.labels" .root | nindent 4 }}
    app.kubernetes.io/component: {{ .component }}
spec:
  scaleTargetRef:
    apiVersion: apps/v1
    kind: {{ .kind }}
    name: {{ include "tally.fullname" .root }}-{{ .component }}
  minReplicaCount: {{ .keda.minReplicas }}
  maxReplicaCount: {{ .keda.maxReplicas }}
  pollingInterval: {{ .keda.pollingInterval }}
  cooldownPeriod: {{ .keda.cooldownPeriod }}
  advanced:
    horizontalPodAutoscalerConfig:
      behavior:
        # Every change of membership is a rebalance: scale down slowly, one
        # pod at a time, and only after the lag stayed low.
        scaleDown:
          stabilizationWindowSeconds: {{ .keda.scaleDownStabilizationSeconds }}
          policies:
            - type: Pods
              value: 1
              periodSeconds: 120
        scaleUp:
          stabilizationWindowSeconds: 60
          policies:
            - type: Pods
              value: 2
              periodSeconds: 60
  triggers:
    - type: kafka
      metadata:
        bootstrapServers: {{ .root.Values.kafka.brokers | quote }}
        consumerGroup: {{ .group | quote }}
        topic: {{ .topic | quote }}
        lagThreshold: {{ .keda.lagThreshold | quote }}
        offsetResetPolicy: earliest
        allowIdleConsumers: "false"
        scaleToZeroOnInvalidOffset: "false"
{{- end -}}
