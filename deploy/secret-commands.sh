#!/usr/bin/env bash
# Prints the `sst secret set` commands that give a stage the cluster's credentials, from the
# files `clusterctl keys init DIR` wrote (DIR/{manager,runner,proxy,client,admin}.key and
# DIR/trust). Each value is read from its file on stdin, so no key appears on a command line
# or in this output. It also makes the random bearer tokens (mode 0600) that do not exist yet:
# DIR/gateway.token, the secret GatewayToken, which HTTP callers send as `Authorization:
# Bearer`, and DIR/effect.token, the secret EffectRpcToken, which Effect RPC clients send.
#
#   build/release/bin/clusterctl keys init ~/.cluster-sst/prod
#   deploy/secret-commands.sh ~/.cluster-sst/prod --stage production          # review
#   deploy/secret-commands.sh ~/.cluster-sst/prod --stage production | bash   # apply
#
# Keep DIR on the operator's machine (admin.key is the cluster's admin credential); for key
# rotation see docs/security.md.
set -euo pipefail

usage() {
  echo "usage: deploy/secret-commands.sh DIR [--stage STAGE]" >&2
  exit 2
}
(($# >= 1)) || usage
dir=$1
shift
stage=""
while (($#)); do
  case $1 in
    --stage)
      (($# >= 2)) || usage
      stage=$2
      shift 2
      ;;
    --stage=*)
      stage=${1#--stage=}
      shift
      ;;
    *) usage ;;
  esac
done

die() {
  echo "secret-commands.sh: $*" >&2
  exit 1
}
[[ -d "$dir" ]] || die "$dir is not a directory (create it with: clusterctl keys init $dir)"
dir=$(cd -P -- "$dir" && pwd -P)

# The sst.Secrets of sst.config.ts and the file each one is set from.
secrets=(
  ClusterManagerKey:manager.key
  ClusterRunnerKey:runner.key
  ClusterProxyKey:proxy.key
  ClusterClientKey:client.key
  ClusterAdminKey:admin.key
  ClusterTrust:trust
  GatewayToken:gateway.token
  EffectRpcToken:effect.token
)
# The ones made here when missing; the others come from clusterctl keys init.
tokens=(gateway.token effect.token)

# Every file first: a missing one must not leave half of the commands printed (and run).
for entry in "${secrets[@]}"; do
  base=${entry#*:}
  file=$dir/$base
  [[ " ${tokens[*]} " == *" $base "* || -s "$file" ]] ||
    die "$file is missing or empty (clusterctl keys init $dir writes the keys and the trust list)"
done
for token in "${tokens[@]}"; do
  [[ ! -e "$dir/$token" ]] || continue
  (umask 077 && od -An -N32 -tx1 /dev/urandom | tr -d ' \n' >"$dir/$token") ||
    die "could not write $dir/$token"
  echo "secret-commands.sh: wrote a new bearer token to $dir/$token" >&2
done

stage_arg=""
[[ -z "$stage" ]] || stage_arg=" --stage $(printf '%q' "$stage")"
for entry in "${secrets[@]}"; do
  name=${entry%%:*}
  file=$dir/${entry#*:}
  [[ -s "$file" ]] || die "$file is empty"
  printf 'npx sst secret set %s%s < %q\n' "$name" "$stage_arg" "$file"
done
