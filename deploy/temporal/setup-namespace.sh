#!/bin/sh
# One-shot job of docker-compose.yml (service temporal-setup, image temporalio/admin-tools):
# wait until the server answers, create the namespace if it is missing, and register the
# search attributes Cascade uses (SEARCH_ATTRIBUTES, "Name=Type ..."). Safe to repeat:
# what exists already is left as it is. The temporal CLI reads TEMPORAL_ADDRESS itself.
set -eu

: "${TEMPORAL_ADDRESS:?}" "${SEARCH_ATTRIBUTES:?}"
NAMESPACE="${NAMESPACE:-default}"

attempt=0
until temporal operator cluster health >/dev/null 2>&1; do
  attempt=$((attempt + 1))
  if [ "$attempt" -ge 60 ]; then
    echo "Temporal at $TEMPORAL_ADDRESS did not become healthy" >&2
    exit 1
  fi
  sleep 2
done

if temporal operator namespace describe --namespace "$NAMESPACE" >/dev/null 2>&1; then
  echo "namespace $NAMESPACE exists"
else
  temporal operator namespace create --namespace "$NAMESPACE"
fi

for attribute in $SEARCH_ATTRIBUTES; do
  name="${attribute%%=*}"
  type="${attribute#*=}"
  if output=$(temporal operator search-attribute create --namespace "$NAMESPACE" --name "$name" --type "$type" 2>&1); then
    echo "registered search attribute $name ($type)"
  else
    case "$output" in
      *"already exists"*|*"already registered"*) echo "search attribute $name exists" ;;
      *) printf '%s\n' "$output" >&2; exit 1 ;;
    esac
  fi
done
