# Sourced by test.sh: installs the services the end-to-end tests start themselves —
# OpenLDAP's slapd (the LDAP user store test) and Redis (the several-hosts test).
# Debian packages; nothing is left running: each test starts its own instance on
# 127.0.0.1 and stops it.

missing=()
[ -x /usr/sbin/slapd ] || missing+=(slapd)
[ -x /usr/bin/redis-server ] || missing+=(redis-server)
if [ ${#missing[@]} -gt 0 ]; then
    sudo_cmd=""
    [ "$(id -u)" -ne 0 ] && sudo_cmd="sudo"
    # slapd's package configuration asks questions; the tests bring their own config.
    export DEBIAN_FRONTEND=noninteractive
    $sudo_cmd apt-get install -y "${missing[@]}" >/dev/null \
        || { $sudo_cmd apt-get update >/dev/null && $sudo_cmd apt-get install -y "${missing[@]}" >/dev/null; }
    # Debian starts the packaged services where it can; the tests do not use them.
    if command -v service >/dev/null 2>&1; then
        $sudo_cmd service slapd stop >/dev/null 2>&1 || true
        $sudo_cmd service redis-server stop >/dev/null 2>&1 || true
    fi
fi
