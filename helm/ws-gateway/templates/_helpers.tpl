{{/*
Expand the name of the chart.
*/}}
{{- define "ws-gateway.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Create a default fully qualified app name.
We truncate at 63 chars because some Kubernetes name fields are limited to this (by the DNS naming spec).
If release name contains chart name it will be used as a full name.
*/}}
{{- define "ws-gateway.fullname" -}}
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

{{/*
Create chart name and version as used by the chart label.
*/}}
{{- define "ws-gateway.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Common labels
*/}}
{{- define "ws-gateway.labels" -}}
helm.sh/chart: {{ include "ws-gateway.chart" . }}
{{ include "ws-gateway.selectorLabels" . }}
{{- if .Chart.AppVersion }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
{{- end }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{/*
Selector labels
*/}}
{{- define "ws-gateway.selectorLabels" -}}
app.kubernetes.io/name: {{ include "ws-gateway.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/*
Create the name of the service account to use
*/}}
{{- define "ws-gateway.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "ws-gateway.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/*
The image reference; the tag defaults to the chart's appVersion.
*/}}
{{- define "ws-gateway.image" -}}
{{- printf "%s:%s" .Values.image.repository (.Values.image.tag | default .Chart.AppVersion) }}
{{- end }}

{{/*
The Secret the pod's GATEWAY_AUTH_SECRET / GATEWAY_REDIS_URL /
GATEWAY_AUTH_ADMIN_API_KEY come from: auth.existingSecret.name, else the
chart-made one (named like the release).
*/}}
{{- define "ws-gateway.secretName" -}}
{{- if .Values.auth.existingSecret.name }}
{{- .Values.auth.existingSecret.name }}
{{- else }}
{{- include "ws-gateway.fullname" . }}
{{- end }}
{{- end }}

{{/*
The secret-backed variables, as a list of dicts {env, key, value}: env is the
variable, key the Secret's key, value the inline value (when the chart makes
the Secret). Returned as JSON (templates can only return strings): use
  {{- $vars := include "ws-gateway.secretVars" . | fromJsonArray }}
With auth.existingSecret.name, a key set to "" is left out; without it, an
inline value left "" is.
*/}}
{{- define "ws-gateway.secretVars" -}}
{{- $es := .Values.auth.existingSecret }}
{{- $all := list }}
{{- $all = append $all (dict "env" "GATEWAY_AUTH_SECRET" "key" $es.secretKey "value" .Values.auth.secret) }}
{{- $all = append $all (dict "env" "GATEWAY_REDIS_URL" "key" $es.redisUrlKey "value" .Values.redis.url) }}
{{- $all = append $all (dict "env" "GATEWAY_AUTH_ADMIN_API_KEY" "key" $es.adminApiKeyKey "value" .Values.auth.adminApiKey) }}
{{- $vars := list }}
{{- range $all }}
{{- if $es.name }}
{{- if .key }}
{{- $vars = append $vars (dict "env" .env "key" .key) }}
{{- end }}
{{- else if .value }}
{{- if not .key }}
{{- fail (printf "auth.existingSecret: the key name for %s is empty, and the chart-made Secret uses the same key names" .env) }}
{{- end }}
{{- $vars = append $vars . }}
{{- end }}
{{- end }}
{{- toJson $vars }}
{{- end }}

{{/*
True ("true", else "") when the chart makes the Secret: no existing Secret
named, and at least one inline value given.
*/}}
{{- define "ws-gateway.createSecret" -}}
{{- if and (not .Values.auth.existingSecret.name) (include "ws-gateway.secretVars" . | fromJsonArray) }}true{{ end }}
{{- end }}

{{/*
The value of variable NAME in extraEnv when given there literally, else "".
Call with (list $ "NAME").
*/}}
{{- define "ws-gateway.extraEnvValue" -}}
{{- $root := index . 0 }}
{{- $name := index . 1 }}
{{- range $root.Values.extraEnv }}
{{- if and (eq (.name | toString) $name) (hasKey . "value") }}
{{- .value | toString }}
{{- end }}
{{- end }}
{{- end }}

{{/*
The port of an "IP:port" / "[v6]:port" address; $default when the address is
empty or has no port. Call with (list ADDRESS DEFAULT).
*/}}
{{- define "ws-gateway.addrPort" -}}
{{- $addr := index . 0 | default "" | toString }}
{{- $port := regexFind "[0-9]+$" $addr }}
{{- if and $addr (contains ":" $addr) $port }}
{{- $port }}
{{- else }}
{{- index . 1 }}
{{- end }}
{{- end }}

{{/*
The container port of "http": the port of config.server.listen (8080 when the
key is removed, the built-in default "0.0.0.0:8080"), or of GATEWAY_SERVER_LISTEN
when extraEnv sets it literally (the environment beats the file).
*/}}
{{- define "ws-gateway.httpPort" -}}
{{- $listen := include "ws-gateway.extraEnvValue" (list . "GATEWAY_SERVER_LISTEN") | default (dig "server" "listen" "" .Values.config) }}
{{- include "ws-gateway.addrPort" (list $listen 8080) }}
{{- end }}

{{/*
The container port of "metrics", or "" when /metrics is served on "http":
from config.server.metrics_listen, or GATEWAY_SERVER_METRICS_LISTEN in extraEnv.
*/}}
{{- define "ws-gateway.metricsPort" -}}
{{- $addr := include "ws-gateway.extraEnvValue" (list . "GATEWAY_SERVER_METRICS_LISTEN") | default (dig "server" "metrics_listen" "" .Values.config) }}
{{- if $addr }}
{{- include "ws-gateway.addrPort" (list $addr "") }}
{{- end }}
{{- end }}

{{/*
A config.server key in seconds as the gateway will see it: extraEnv's
GATEWAY_SERVER_<KEY> if set literally there, else the value, else the
built-in default. Call with (list $ "shutdown_drain_secs" 10).
*/}}
{{- define "ws-gateway.serverSecs" -}}
{{- $root := index . 0 }}
{{- $key := index . 1 }}
{{- $env := include "ws-gateway.extraEnvValue" (list $root (printf "GATEWAY_SERVER_%s" (upper $key))) }}
{{- if $env }}
{{- $env | int64 }}
{{- else }}
{{- dig "server" $key (index . 2) $root.Values.config | int64 }}
{{- end }}
{{- end }}

{{/*
Fails the render when the termination grace period cannot cover the preStop
pause, the not-ready delay, the drain window and a margin of 5 s for the last
closes and the exit.
*/}}
{{- define "ws-gateway.checkGracePeriod" -}}
{{- $preStop := .Values.lifecycle.preStopSleepSeconds | int64 }}
{{- $delay := include "ws-gateway.serverSecs" (list . "shutdown_delay_secs" 0) | int64 }}
{{- $drain := include "ws-gateway.serverSecs" (list . "shutdown_drain_secs" 10) | int64 }}
{{- $grace := .Values.terminationGracePeriodSeconds | int64 }}
{{- $needed := add $preStop $delay $drain 5 }}
{{- if lt $grace $needed }}
{{- fail (printf "terminationGracePeriodSeconds (%d) must be at least lifecycle.preStopSleepSeconds (%d) + config.server.shutdown_delay_secs (%d) + config.server.shutdown_drain_secs (%d) + 5 = %d, or SIGKILL cuts the drain short" $grace $preStop $delay $drain $needed) }}
{{- end }}
{{- end }}

{{/*
TOML rendering of .Values.config into gateway.toml.

"ws-gateway.toml.key": a key, bare when TOML allows ([A-Za-z0-9_-]+), else a
quoted string.
*/}}
{{- define "ws-gateway.toml.key" -}}
{{- if regexMatch "^[A-Za-z0-9_-]+$" . }}
{{- . }}
{{- else }}
{{- toJson . }}
{{- end }}
{{- end }}

{{/*
"ws-gateway.toml.value": one value.
- string: a TOML basic string. toJson's escapes (\" \\ \n \r \t \b \f \uXXXX,
  and \u003c \u003e \u0026 for < > &) are all valid TOML escapes.
- bool: true / false.
- number: an integer when whole. Values from a YAML file reach templates as
  float64, whose default formatting turns 1000000 into 1e+06 (a TOML float,
  refused by the gateway's integer keys), so whole numbers go through int64.
  A number with a fraction is written as JSON writes it, a valid TOML float.
- list: a TOML array, [] when empty.
- map (inside a list): an inline table { k = v, ... }.
Anything else (null inside a list) fails the render.
*/}}
{{- define "ws-gateway.toml.value" -}}
{{- $v := . }}
{{- if kindIs "string" $v }}
{{- toJson $v }}
{{- else if kindIs "bool" $v }}
{{- ternary "true" "false" $v }}
{{- else if or (kindIs "float64" $v) (kindIs "float32" $v) }}
{{- if eq (float64 (int64 $v)) (float64 $v) }}
{{- int64 $v }}
{{- else }}
{{- toJson $v }}
{{- end }}
{{- else if or (kindIs "int" $v) (kindIs "int64" $v) (kindIs "int32" $v) (kindIs "uint" $v) (kindIs "uint64" $v) (kindIs "uint32" $v) }}
{{- $v }}
{{- else if kindIs "slice" $v }}
{{- $items := list }}
{{- range $v }}
{{- $items = append $items (include "ws-gateway.toml.value" .) }}
{{- end }}
{{- printf "[%s]" (join ", " $items) }}
{{- else if kindIs "map" $v }}
{{- $pairs := list }}
{{- range $k, $item := $v }}
{{- if not (kindIs "invalid" $item) }}
{{- $pairs = append $pairs (printf "%s = %s" (include "ws-gateway.toml.key" $k) (include "ws-gateway.toml.value" $item)) }}
{{- end }}
{{- end }}
{{- if $pairs }}
{{- printf "{ %s }" (join ", " $pairs) }}
{{- else }}
{{- print "{}" }}
{{- end }}
{{- else }}
{{- fail (printf "config: cannot write %v (a %s) as a TOML value" $v (kindOf $v)) }}
{{- end }}
{{- end }}

{{/*
"ws-gateway.toml.table": a table and its sub-tables, called with
(dict "path" "section.sub" "table" MAP); path "" is the document's root.
First the header [path] and the table's own keys, sorted (TOML needs them
before any sub-table header); then each map-valued key as the sub-table
[path.key], recursively, after a blank line. Keys at the root (path "") come
before every header, as TOML wants; the gateway has none (the schema says
so). The header is written only when the table has keys of its own, so an empty section is left out and a table holding only sub-tables
is implied by theirs. Null values are left out: the gateway's built-in default
applies.
*/}}
{{- define "ws-gateway.toml.table" -}}
{{- $path := .path }}
{{- $table := .table }}
{{- $own := list }}
{{- range $k, $v := $table }}
{{- if not (or (kindIs "map" $v) (kindIs "invalid" $v)) }}
{{- $own = append $own $k }}
{{- end }}
{{- end }}
{{- if and $path $own }}
{{ printf "[%s]" $path }}
{{- end }}
{{- range $own }}
{{ include "ws-gateway.toml.key" . }} = {{ include "ws-gateway.toml.value" (get $table .) }}
{{- end }}
{{- range $k, $v := $table }}
{{- if kindIs "map" $v }}
{{- $key := include "ws-gateway.toml.key" $k }}
{{- $sub := ternary (printf "%s.%s" $path $key) $key (ne $path "") }}
{{- $out := include "ws-gateway.toml.table" (dict "path" $sub "table" $v) }}
{{- if $out }}
{{- printf "\n\n%s" (trimAll "\n" $out) }}
{{- end }}
{{- end }}
{{- end }}
{{- end }}

{{/*
"ws-gateway.toml": the whole file from a map of sections.
*/}}
{{- define "ws-gateway.toml" -}}
{{- include "ws-gateway.toml.table" (dict "path" "" "table" .) | trim }}
{{- end }}
