#!/bin/sh
# Install queuectl as a system service (Debian and other systemd distributions).
#
#   sudo packaging/install.sh               # install or upgrade, enable and (re)start
#   sudo packaging/install.sh --no-start    # install, but leave the service alone
#   sudo packaging/install.sh --units-only  # units, config, docs; queuectld is already
#                                           # installed as /usr/local/bin/queuectld
#   sudo packaging/install.sh --uninstall   # stop, disable, remove program and units
#   sudo packaging/install.sh --uninstall --purge   # ... and queue, logs, config, user
#
# What it does (docs/operations.md has the details):
#   * creates the system group and user `queuectl` (no login, home /var/lib/queuectl);
#   * installs the program into a fresh virtual environment
#     /opt/queuectl/releases/<version>-<time>, points /opt/queuectl/current at it and
#     links /usr/local/bin/queuectl and queuectld there; the two newest releases are
#     kept (a running daemon keeps using its own until it restarts; rollback = relink);
#   * installs queuectld.service and queuectld.socket into /usr/local/lib/systemd/system
#     and the per-user unit into /usr/local/lib/systemd/user;
#   * installs queuectl-http.service (the HTTP gateway, user queuectl-http; not enabled:
#     `systemctl enable --now queuectl-http`) and /etc/queuectl/http.toml;
#   * installs /etc/queuectl/queuectld.toml unless one exists (then: queuectld.toml.dist);
#   * checks the configuration, reloads systemd, enables the socket and the service,
#     and starts them, or restarts a running service (which drains: no job is lost).
#
# Environment: PYTHON (default /usr/bin/python3), PREFIX (default /opt/queuectl),
# PIP_* (e.g. PIP_INDEX_URL, or PIP_NO_INDEX=1 PIP_FIND_LINKS=dir offline),
# DESTDIR (stage into a directory: no user, no systemctl; for packaging and tests).
set -eu

SRC=$(cd "$(dirname "$0")/.." && pwd)
PYTHON=${PYTHON:-/usr/bin/python3}
PREFIX=${PREFIX:-/opt/queuectl}
DESTDIR=${DESTDIR:-}
UNITDIR=/usr/local/lib/systemd/system
USERUNITDIR=/usr/local/lib/systemd/user
BINDIR=/usr/local/bin
# Shell completion (click's own), where each shell looks for packaged completions.
BASH_COMPLETION=/usr/share/bash-completion/completions/queuectl
ZSH_COMPLETION=/usr/share/zsh/vendor-completions/_queuectl
FISH_COMPLETION=/usr/share/fish/vendor_completions.d/queuectl.fish
DOCDIR=/usr/local/share/doc/queuectl
CONFDIR=/etc/queuectl
NAME=queuectl

start=yes
program=yes
action=install
purge=no
for arg in "$@"; do
    case $arg in
        --no-start) start=no ;;
        --units-only) program=no ;;
        --uninstall) action=uninstall ;;
        --purge) purge=yes ;;
        -h|--help) sed -n '2,26p' "$0"; exit 0 ;;
        *) echo "install.sh: unknown option $arg (see --help)" >&2; exit 2 ;;
    esac
done

say() { printf 'queuectl: %s\n' "$*"; }
have_systemd() { [ -z "$DESTDIR" ] && [ -d /run/systemd/system ]; }

if [ -z "$DESTDIR" ] && [ "$(id -u)" -ne 0 ]; then
    echo "install.sh: run as root (sudo $0 $*), or set DESTDIR to stage" >&2
    exit 1
fi

uninstall() {
    if have_systemd; then
        systemctl disable --now queuectld.socket queuectld.service 2>/dev/null || true
    fi
    if have_systemd; then
        systemctl disable --now queuectl-http.service 2>/dev/null || true
    fi
    rm -f "$DESTDIR$UNITDIR/queuectld.service" "$DESTDIR$UNITDIR/queuectld.socket" \
          "$DESTDIR$UNITDIR/queuectl-http.service" \
          "$DESTDIR$USERUNITDIR/queuectld.service" \
          "$DESTDIR$BINDIR/queuectl" "$DESTDIR$BINDIR/queuectld" \
          "$DESTDIR/etc/logrotate.d/queuectld" \
          "$DESTDIR$BASH_COMPLETION" "$DESTDIR$ZSH_COMPLETION" "$DESTDIR$FISH_COMPLETION"
    rm -rf "$DESTDIR$PREFIX" "$DESTDIR$DOCDIR"
    if have_systemd; then
        systemctl daemon-reload
    fi
    if [ "$purge" = yes ]; then
        rm -rf "$DESTDIR$CONFDIR" "$DESTDIR/var/lib/queuectl" "$DESTDIR/var/log/queuectl" \
               "$DESTDIR/run/queuectl"
        if [ -z "$DESTDIR" ]; then
            if getent passwd "$NAME-http" >/dev/null; then userdel "$NAME-http"; fi
            if getent group "$NAME-http" >/dev/null; then groupdel "$NAME-http"; fi
            if getent passwd "$NAME" >/dev/null; then userdel "$NAME"; fi
            if getent group "$NAME" >/dev/null; then groupdel "$NAME"; fi
        fi
        say "removed, with the queue, its logs, the configuration and the user"
    else
        say "removed; the queue (/var/lib/queuectl), /etc/queuectl and the user stay (--purge)"
    fi
}

create_user() {
    [ -z "$DESTDIR" ] || return 0
    if ! getent group "$NAME" >/dev/null; then
        groupadd --system "$NAME"
        say "created group $NAME"
    fi
    if ! getent passwd "$NAME" >/dev/null; then
        nologin=/usr/sbin/nologin
        [ -x "$nologin" ] || nologin=/sbin/nologin
        useradd --system --gid "$NAME" --home-dir /var/lib/queuectl --no-create-home \
                --shell "$nologin" --comment "queuectl job queue" "$NAME"
        say "created user $NAME"
    fi
    # The HTTP gateway's own user, in the queue's group so that it may use the socket.
    if ! getent passwd "$NAME-http" >/dev/null; then
        nologin=/usr/sbin/nologin
        [ -x "$nologin" ] || nologin=/sbin/nologin
        useradd --system --user-group --groups "$NAME" --home-dir /nonexistent \
                --no-create-home --shell "$nologin" --comment "queuectl HTTP gateway" "$NAME-http"
        say "created user $NAME-http"
    fi
}

install_program() {
    version=$(sed -n 's/^version *= *//p' "$SRC/setup.cfg")
    name="$version-$(date +%Y%m%d%H%M%S)"
    release="$PREFIX/releases/$name"
    say "installing queuectl $version into $release"
    mkdir -p "$DESTDIR$PREFIX/releases"
    "$PYTHON" -m venv "$DESTDIR$release"
    # Build from a copy: never write build files into the source tree.
    build=$(mktemp -d)
    trap 'rm -rf "$build"' EXIT
    tar -C "$SRC" --exclude=.venv --exclude=.git --exclude='*.egg-info' --exclude=build \
        -cf - setup.cfg pyproject.toml README.md queuectl queuectld | tar -C "$build" -xf -
    # With the http extra (queuectl-http.service runs the gateway from this release) and the
    # postgres extra (a store several hosts share, docs/postgres.md).
    "$DESTDIR$release/bin/python" -m pip install --quiet --disable-pip-version-check "$build[http,postgres]"
    ln -sfn "releases/$name" "$DESTDIR$PREFIX/current.new"
    mv -T "$DESTDIR$PREFIX/current.new" "$DESTDIR$PREFIX/current"
    mkdir -p "$DESTDIR$BINDIR"
    ln -sfn "$PREFIX/current/bin/queuectl" "$DESTDIR$BINDIR/queuectl"
    ln -sfn "$PREFIX/current/bin/queuectld" "$DESTDIR$BINDIR/queuectld"
    for pair in "bash:$BASH_COMPLETION" "zsh:$ZSH_COMPLETION" "fish:$FISH_COMPLETION"; do
        install -d "$DESTDIR$(dirname "${pair#*:}")"
        "$DESTDIR$release/bin/queuectl" completion "${pair%%:*}" > "$DESTDIR${pair#*:}"
    done
    # Keep the two newest releases (the previous one for a rollback).
    # shellcheck disable=SC2012
    ls -1d "$DESTDIR$PREFIX/releases/"* | sort | head -n -2 | while read -r old; do
        rm -rf "$old"
    done
}

install_files() {
    install -d "$DESTDIR$UNITDIR" "$DESTDIR$USERUNITDIR" "$DESTDIR$DOCDIR" \
               "$DESTDIR$CONFDIR" "$DESTDIR/etc/logrotate.d"
    install -m 0644 "$SRC/packaging/systemd/queuectld.service" \
                    "$SRC/packaging/systemd/queuectld.socket" \
                    "$SRC/packaging/systemd/queuectl-http.service" "$DESTDIR$UNITDIR/"
    install -m 0644 "$SRC/packaging/systemd/user/queuectld.service" "$DESTDIR$USERUNITDIR/"
    install -m 0644 "$SRC/packaging/logrotate/queuectld" "$DESTDIR/etc/logrotate.d/queuectld"
    install -m 0644 "$SRC/docs/operations.md" "$SRC/docs/http.md" "$DESTDIR$DOCDIR/"
    install -m 0644 "$SRC/packaging/systemd/dropins/http-token.conf" "$DESTDIR$DOCDIR/"
    if [ ! -e "$DESTDIR$CONFDIR/http.toml" ]; then
        install -m 0644 "$SRC/etc/queuectl/http.toml" "$DESTDIR$CONFDIR/http.toml"
    fi
    conf="$DESTDIR$CONFDIR/queuectld.toml"
    if [ -e "$conf" ]; then
        if ! cmp -s "$SRC/etc/queuectl/queuectld.toml" "$conf"; then
            install -m 0644 "$SRC/etc/queuectl/queuectld.toml" "$conf.dist"
            say "kept your $CONFDIR/queuectld.toml; the shipped one is queuectld.toml.dist"
        fi
    else
        install -m 0644 "$SRC/etc/queuectl/queuectld.toml" "$conf"
        say "installed $CONFDIR/queuectld.toml"
    fi
}

start_service() {
    if [ -n "$DESTDIR" ]; then
        say "staged into $DESTDIR"
        return 0
    fi
    "$BINDIR/queuectld" --check-config --config "$CONFDIR/queuectld.toml"
    if ! have_systemd; then
        say "systemd is not running here: start queuectld yourself"
        return 0
    fi
    systemctl daemon-reload
    if [ "$start" = no ]; then
        say "installed; start with: systemctl enable --now queuectld.socket queuectld.service"
        return 0
    fi
    systemctl enable queuectld.socket queuectld.service
    if systemctl is-active --quiet queuectld.service; then
        say "restarting the running service (it drains first)"
        systemctl restart queuectld.service
    else
        systemctl start queuectld.socket queuectld.service
    fi
    systemctl --no-pager --lines=0 status queuectld.service || true
    say "ready. Let a user submit jobs with: usermod -aG $NAME <user> (then log in again)"
    say "the HTTP gateway (docs/http.md): systemctl enable --now queuectl-http"
}

if [ "$action" = uninstall ]; then
    uninstall
    exit 0
fi
create_user
if [ "$program" = yes ]; then
    install_program
elif [ ! -x "$DESTDIR$BINDIR/queuectld" ] && [ -z "$DESTDIR" ]; then
    echo "install.sh: --units-only, but there is no $BINDIR/queuectld" >&2
    exit 1
fi
install_files
start_service
