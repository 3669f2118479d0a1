#!/usr/bin/env bash
# Set up everything cxr-node needs on a fresh Debian machine: the DICOM tools the tests drive
# (dcmtk, dicom3tools, Orthanc with DICOMweb), RabbitMQ and PostgreSQL (the scale-out tests
# start their own brokers and databases as processes), the virtual environment at .venv, and for the
# viewer test (tests/system/test_viewer.py) Chromium and OHIF Viewer's prebuilt dist/ (npm's
# @ohif/app, the version pinned in tests/system/ohif.py) in .cache/ohif/. Chromium and OHIF
# are optional: where they cannot be had, setup says so and that test skips.
# Idempotent: a second run only checks.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3.11}
command -v "$PYTHON" >/dev/null 2>&1 || PYTHON=python3

need_apt=()
command -v storescu >/dev/null 2>&1 || need_apt+=(dcmtk)
command -v dciodvfy >/dev/null 2>&1 || need_apt+=(dicom3tools)
command -v Orthanc >/dev/null 2>&1 || need_apt+=(orthanc)
if ! ls /usr/share/orthanc/plugins/libOrthancDicomWeb.so >/dev/null 2>&1; then
  need_apt+=(orthanc-dicomweb)
fi
# the real scripts, not Debian's /usr/sbin wrappers: tests/rabbit_cluster.py runs them as is
[ -x /usr/lib/rabbitmq/bin/rabbitmq-server ] || need_apt+=(rabbitmq-server)
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || need_apt+=(postgresql)
# the audit test's syslog collector over TLS (tests/system/test_audit.py)
[ -x /usr/sbin/rsyslogd ] || need_apt+=(rsyslog)
ls /usr/lib/*/rsyslog/lmnsd_gtls.so >/dev/null 2>&1 || need_apt+=(rsyslog-gnutls)
# optional: headless Chromium (and a font) and npm (to fetch OHIF) for the viewer test
want_apt=()
command -v chromium >/dev/null 2>&1 || want_apt+=(chromium fonts-dejavu-core)
command -v npm >/dev/null 2>&1 || want_apt+=(npm)
if [ $((${#need_apt[@]} + ${#want_apt[@]})) -gt 0 ]; then
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO=sudo
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -qq
fi
if [ ${#need_apt[@]} -gt 0 ]; then
  echo "setup: installing ${need_apt[*]} from Debian" >&2
  $SUDO apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
  # Debian starts Orthanc, RabbitMQ and PostgreSQL services on install; the tests start their own.
  for service in orthanc rabbitmq-server postgresql rsyslog; do
    $SUDO service "$service" stop >/dev/null 2>&1 || true
  done
fi
if [ ${#want_apt[@]} -gt 0 ]; then
  echo "setup: installing ${want_apt[*]} from Debian (for the viewer test)" >&2
  $SUDO apt-get install -y -qq --no-install-recommends "${want_apt[@]}" >/dev/null ||
    echo "setup: could not install ${want_apt[*]}; the viewer test will skip" >&2
fi

# OHIF Viewer's prebuilt dist/ for the viewer test: npm pack fetches the pinned release (the
# package is only dist/, nothing in it needs installing), unpacked into .cache/ohif/<version>.
ohif_version=$(sed -n 's/^OHIF_VERSION = "\(.*\)"$/\1/p' tests/system/ohif.py)
ohif=.cache/ohif/$ohif_version
if [ -n "$ohif_version" ] && [ ! -f "$ohif/dist/index.html" ]; then
  if command -v npm >/dev/null 2>&1; then
    echo "setup: fetching @ohif/app@$ohif_version with npm" >&2
    mkdir -p .cache/ohif
    tmp=$(mktemp -d .cache/ohif/.fetch.XXXXXX)
    if npm pack "@ohif/app@$ohif_version" --pack-destination "$tmp" --silent >/dev/null &&
       tar -xzf "$tmp"/*.tgz -C "$tmp" && [ -f "$tmp/package/dist/index.html" ]; then
      mkdir -p "$ohif"
      rm -rf "$ohif/dist"
      mv "$tmp/package/dist" "$ohif/dist"
    else
      echo "setup: npm could not fetch @ohif/app@$ohif_version; the viewer test will skip" >&2
    fi
    rm -rf "$tmp"
  else
    echo "setup: npm is not installed; the viewer test (OHIF) will skip" >&2
  fi
fi

stamp=.venv/.cxr-node-setup
want=$(sha256sum pyproject.toml | cut -c1-16)
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  echo "setup: installing Python packages into .venv (first run takes a few minutes)" >&2
  .venv/bin/python -m pip install -q --upgrade pip >/dev/null
  # torch and torchvision first, pinned: pip takes them from this machine's wheel store.
  .venv/bin/python -m pip install -q torch==2.14.1 torchvision==0.29.1
  .venv/bin/python -m pip install -q -e '.[test]'
  echo "$want" > "$stamp"
fi
