# shellcheck shell=bash
# Operating the fleet (issue 14): tools the tests use, never the processor itself.
# Sourced by scripts/setup.sh (helpers: log; vars: ROOT ASSETS PY). Idempotent.
#
#   chromium (Debian)              headless browser: the dashboard test loads the page in it
#   kubernetes-validate==1.37.0    PyPI, in $ASSETS/venv-k8s: validates deploy/k8s offline
#                                  against the Kubernetes schemas the package ships
# TEDDYFLOW_SKIP_TEST_TOOLS=1 skips both (the Docker image's build stage).

install_chromium() {
  dpkg-query -W -f='${Status}' chromium 2>/dev/null | grep -q "install ok installed" && return
  log "apt-get install chromium (dashboard browser test)"
  local sudo=""; [ "$(id -u)" -ne 0 ] && sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq chromium fonts-dejavu-core >/dev/null
}

install_kubernetes_validate() {
  local venv="$ASSETS/venv-k8s"
  "$venv/bin/kubernetes-validate" --version 2>/dev/null | grep -q "1.37.0" && return
  log "installing kubernetes-validate 1.37.0 into $venv"
  rm -rf "$venv"
  if "$PY" -m venv "$venv" 2>/dev/null; then
    "$venv/bin/pip" install --quiet --disable-pip-version-check kubernetes-validate==1.37.0
  else
    # A Debian python3 without python3-venv: a --target install and a small launcher.
    "$PY" -m pip install --quiet --disable-pip-version-check --target "$venv/lib" kubernetes-validate==1.37.0
    mkdir -p "$venv/bin"
    printf '#!/bin/sh\nPYTHONPATH="%s/lib" exec %s -m kubernetes_validate "$@"\n' "$venv" "$PY" > "$venv/bin/kubernetes-validate"
    chmod +x "$venv/bin/kubernetes-validate"
  fi
}

if [ "${TEDDYFLOW_SKIP_TEST_TOOLS:-0}" != 1 ]; then
  install_chromium
  install_kubernetes_validate
fi
