{{/* The release's full name, trimmed to the 63 characters a label value allows. */}}
{{- define "stopline.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{/* Labels that never change over the release's life: Deployment and Service selectors use them. */}}
{{- define "stopline.selectorLabels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "stopline.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "stopline.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: stopline
{{- end -}}

{{- define "stopline.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "stopline.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "stopline.image" -}}
{{- if .Values.image.digest -}}
{{ .Values.image.repository }}@{{ .Values.image.digest }}
{{- else -}}
{{ .Values.image.repository }}:{{ default .Chart.AppVersion .Values.image.tag }}
{{- end -}}
{{- end -}}

{{/* The operator pods' topologySpreadConstraints (replicaCount > 1): the values' list, each without a
labelSelector given the pods' labels; by default over nodes and zones, ScheduleAnyway. matchLabelKeys
pod-template-hash: during a rollout only the pods of the same ReplicaSet count. */}}
{{- define "stopline.topologySpread" -}}
{{- $selector := dict "matchLabels" (include "stopline.selectorLabels" . | fromYaml) -}}
{{- $constraints := .Values.topologySpreadConstraints -}}
{{- if not $constraints -}}
{{- $constraints = list -}}
{{- range $key := list "kubernetes.io/hostname" "topology.kubernetes.io/zone" -}}
{{- $constraints = append $constraints (dict "maxSkew" 1 "topologyKey" $key "whenUnsatisfiable" "ScheduleAnyway" "matchLabelKeys" (list "pod-template-hash")) -}}
{{- end -}}
{{- end -}}
{{- $out := list -}}
{{- range $constraints -}}
{{- $constraint := deepCopy . -}}
{{- if not (hasKey $constraint "labelSelector") }}{{ $_ := set $constraint "labelSelector" $selector }}{{ end -}}
{{- $out = append $out $constraint -}}
{{- end -}}
{{- toYaml $out -}}
{{- end -}}

{{/* The PromQL label matchers of the operator's targets, without braces. */}}
{{- define "stopline.alertSelector" -}}
{{- .Values.prometheusRule.selector | default (printf "job=%q" (include "stopline.fullname" .)) -}}
{{- end -}}

{{/* The operator's least privilege, from the one file the tests also run the operator under. */}}
{{- define "stopline.rules" -}}
{{ .Files.Get "files/operator-rules.yaml" | fromYamlArray | toYaml }}
{{- end -}}

{{/* An IP block "address/length" as JSON {groups, width, length}: IPv4 as 4 groups of 8 bits, IPv6 as 8
groups of 16 ("::" expanded), so that one comparison serves both. */}}
{{- define "stopline.cidr" -}}
{{- $address := first (splitList "/" .) -}}
{{- $groups := list -}}
{{- $width := 8 -}}
{{- if contains ":" $address -}}
{{- $width = 16 -}}
{{- $halves := splitList "::" $address -}}
{{- $head := list -}}
{{- $tail := list -}}
{{- with first $halves }}{{ $head = splitList ":" . }}{{ end -}}
{{- if gt (len $halves) 1 }}{{ with last $halves }}{{ $tail = splitList ":" . }}{{ end }}{{ end -}}
{{- range $head }}{{ $groups = append $groups (int64 (printf "0x%s" .)) }}{{ end -}}
{{- range until (int (sub 8 (add (len $head) (len $tail)))) }}{{ $groups = append $groups 0 }}{{ end -}}
{{- range $tail }}{{ $groups = append $groups (int64 (printf "0x%s" .)) }}{{ end -}}
{{- else -}}
{{- range splitList "." $address }}{{ $groups = append $groups (atoi .) }}{{ end -}}
{{- end -}}
{{- dict "groups" $groups "width" $width "length" (atoi (last (splitList "/" .))) | toJson -}}
{{- end -}}

{{/* "true" when the block .outer holds the block .inner (both from stopline.cidr): same family, no longer
a prefix, and the same bits over the outer prefix. */}}
{{- define "stopline.cidrHolds" -}}
{{- $outer := .outer -}}
{{- $inner := .inner -}}
{{- $width := int $outer.width -}}
{{- $holds := and (eq $width (int $inner.width)) (le (int $outer.length) (int $inner.length)) -}}
{{- if $holds -}}
{{- $powers := list 1 2 4 8 16 32 64 128 256 512 1024 2048 4096 8192 16384 32768 65536 -}}
{{- range $i, $group := $outer.groups -}}
{{- $bits := min $width (max 0 (sub (int $outer.length) (mul $i $width))) -}}
{{- $unit := index $powers (sub $width $bits) -}}
{{- if ne (div $group $unit) (div (index $inner.groups $i) $unit) }}{{ $holds = false }}{{ end -}}
{{- end -}}
{{- end -}}
{{- if $holds }}true{{ end -}}
{{- end -}}

{{/* A NetworkPolicyPeer of the operator's egress (.peer), named .where in errors: an ipBlock that holds
cloud metadata or link-local addresses gets them as except, one inside them refuses to render. */}}
{{- define "stopline.egressPeer" -}}
{{- $peer := deepCopy .peer -}}
{{- $where := .where -}}
{{- with $peer.ipBlock -}}
{{- $cidr := .cidr -}}
{{- $block := include "stopline.cidr" $cidr | fromJson -}}
{{- $except := .except | default list -}}
{{- /* 169.254.169.254 and fd00:ec2::254 are the cloud instance metadata services (AWS, GCP, Azure) */ -}}
{{- range $metadata := list "169.254.0.0/16" "fe80::/10" "fd00:ec2::254/128" -}}
{{- $denied := include "stopline.cidr" $metadata | fromJson -}}
{{- if include "stopline.cidrHolds" (dict "outer" $denied "inner" $block) -}}
{{- fail (printf "%s: %s lies in %s (link-local, cloud metadata): the operator never needs it; remove it" $where $cidr $metadata) -}}
{{- else if and (include "stopline.cidrHolds" (dict "outer" $block "inner" $denied)) (not (has $metadata $except)) -}}
{{- $except = append $except $metadata -}}
{{- end -}}
{{- end -}}
{{- with $except }}{{ $_ := set $peer.ipBlock "except" . }}{{ end -}}
{{- end -}}
{{- toYaml $peer -}}
{{- end -}}
