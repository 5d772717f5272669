#!/bin/sh
# Install (or upgrade) relay on a Debian or RHEL server: a virtualenv under
# /opt/relay, the `relay` system user, the systemd unit, the documentation the
# unit points at, and /usr/local/bin/relay. Run as root from a checkout of
# the repository (or give --from a wheel). deploy/README.md walks through it.
#
#   deploy/install.sh [--prefix DIR] [--from PATH] [--unit-dir DIR] [--bin-dir DIR] [--no-system]
#
# --prefix    the virtualenv (default /opt/relay)
# --from      what pip installs: a checkout or a wheel (default: this checkout)
# --unit-dir  where relay.service goes (default /etc/systemd/system)
# --bin-dir   where the `relay` symlink goes (default /usr/local/bin)
# --no-system skip what needs root and a real system: the user, the state
#             directory, systemctl (the test suite installs into a temp dir so)
#
# Running it again upgrades in place: pip installs the new version into the
# same virtualenv and the unit is rewritten; restart the node afterwards
# (systemctl restart relay; the database is migrated at start).
set -eu

prefix=/opt/relay
from=$(cd "$(dirname "$0")/.." && pwd)
unit_dir=/etc/systemd/system
bin_dir=/usr/local/bin
system=yes
while [ $# -gt 0 ]; do
    case "$1" in
        --prefix) prefix=$2; shift 2 ;;
        --from) from=$2; shift 2 ;;
        --unit-dir) unit_dir=$2; shift 2 ;;
        --bin-dir) bin_dir=$2; shift 2 ;;
        --no-system) system=no; shift ;;
        *) echo "install.sh: unknown argument $1 (see the comment at the top)" >&2; exit 2 ;;
    esac
done
case "$prefix" in /*) ;; *) echo "install.sh: --prefix must be absolute" >&2; exit 2 ;; esac
src=$(cd "$(dirname "$0")/.." && pwd)
python=${PYTHON:-python3}

if ! "$python" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
    echo "install.sh: relay needs Python 3.11 or newer as $python" \
        "(Debian 12: apt install python3 python3-venv; RHEL 9: dnf install python3.11," \
        "then PYTHON=python3.11 $0)" >&2
    exit 1
fi
if [ ! -x "$prefix/bin/python" ]; then
    echo "== creating the virtualenv $prefix"
    if ! "$python" -m venv "$prefix"; then
        echo "install.sh: $python -m venv failed (Debian: apt install python3-venv)" >&2
        exit 1
    fi
fi
echo "== installing relay from $from into $prefix"
"$prefix/bin/pip" install --quiet --upgrade "$from"
"$prefix/bin/relay" --version

echo "== documentation in $prefix/share/doc/relay"
doc="$prefix/share/doc/relay"
mkdir -p "$doc/docs"
cp "$src/README.md" "$doc/README.md"
cp "$src/deploy/README.md" "$doc/deploy.md"
cp "$src"/docs/*.md "$doc/docs/"
mkdir -p "$prefix/share/relay"
cp "$src/deploy/grafana/relay.json" "$prefix/share/relay/grafana-dashboard.json"

echo "== systemd units relay.service and relay-workers@.service in $unit_dir"
mkdir -p "$unit_dir"
for unit in relay.service relay-workers@.service; do
    sed -e "s|/opt/relay|$prefix|g" "$src/deploy/$unit" > "$unit_dir/$unit.new"
    chmod 0644 "$unit_dir/$unit.new"
    mv "$unit_dir/$unit.new" "$unit_dir/$unit"
done

mkdir -p "$bin_dir"
ln -sfn "$prefix/bin/relay" "$bin_dir/relay"

if [ "$system" = yes ]; then
    if ! id relay >/dev/null 2>&1; then
        echo "== creating the system user relay"
        useradd --system --user-group --home-dir /var/lib/relay --shell /usr/sbin/nologin relay
    fi
    install -d -o relay -g relay -m 0700 /var/lib/relay
    systemctl daemon-reload
fi

cat <<EOF
== done. Next, if this is a new node (see $doc/deploy.md):
  sudo -u relay relay init /var/lib/relay --name NAME --jurisdiction CC \\
      --listen 127.0.0.1:8701 --public-url https://NAME
  sudo systemctl enable --now relay
After an upgrade: sudo systemctl restart relay
EOF
