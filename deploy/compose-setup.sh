#!/bin/sh
# Creates the four demo nodes of compose.yaml once and pins them to each other;
# spb keeps its state in the `postgres` service instead of a SQLite file.
# Each node's directory lives in the shared volume; tokens are written to
# /var/lib/relay/<node>/tokens.txt (mode 0600) for the operator to read.
set -eu
cd /var/lib/relay
if [ -f .setup-done ]; then
    echo "federation already set up"
    exit 0
fi
for spec in msk:msk.demo.ru:RU ala:ala.demo.kz:KZ ber:ber.demo.de:DE spb:spb.demo.ru:RU; do
    dir=${spec%%:*}; rest=${spec#*:}; name=${rest%%:*}; cc=${rest#*:}
    relay init "$dir" --name "$name" --jurisdiction "$cc" \
        --listen 0.0.0.0:8701 --public-url "http://$dir:8701" > "$dir.peerline"
done
for me in msk ala ber spb; do
    for other in msk ala ber spb; do
        [ "$me" = "$other" ] && continue
        # the printed line is `relay peer add YOUR_NODE_DIR --name ...`
        args=$(sed -n 's/^relay peer add YOUR_NODE_DIR //p' "$other.peerline")
        eval "relay peer add $me $args"
    done
done
umask 077
# spb on PostgreSQL: the URL names no password (node.toml is world-readable);
# the password is in a 0600 file beside it.
printf '%s\n' "$RELAY_DEMO_DB_PASSWORD" > spb/db.password
# [storage] url replaces [node] database, which init wrote
sed -i '/^database = /d' spb/node.toml
cat >> spb/node.toml <<'TOML'

[storage]
url = "postgresql://relay@postgres:5432/relay"
password_file = "db.password"
TOML
relay mailbox add msk alice | tail -n 1 > msk/tokens.txt
relay mailbox add ala bob | tail -n 1 > ala/tokens.txt
relay mailbox add ber carl | tail -n 1 > ber/tokens.txt
relay mailbox add spb dina | tail -n 1 > spb/tokens.txt
for d in msk ala ber spb; do relay check "$d"; done
touch .setup-done
