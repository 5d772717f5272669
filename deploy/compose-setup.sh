#!/bin/sh
# Creates the three demo nodes of compose.yaml once and pins them to each other.
# Each node's directory lives in the shared volume; tokens are written to
# /var/lib/relay/<node>/tokens.txt (mode 0600) for the operator to read.
set -eu
cd /var/lib/relay
if [ -f .setup-done ]; then
    echo "federation already set up"
    exit 0
fi
for spec in msk:msk.demo.ru:RU ala:ala.demo.kz:KZ ber:ber.demo.de:DE; do
    dir=${spec%%:*}; rest=${spec#*:}; name=${rest%%:*}; cc=${rest#*:}
    relay init "$dir" --name "$name" --jurisdiction "$cc" \
        --listen 0.0.0.0:8701 --public-url "http://$dir:8701" > "$dir.peerline"
done
for me in msk ala ber; do
    for other in msk ala ber; do
        [ "$me" = "$other" ] && continue
        # the printed line is `relay peer add YOUR_NODE_DIR --name ...`
        args=$(sed -n 's/^relay peer add YOUR_NODE_DIR //p' "$other.peerline")
        eval "relay peer add $me $args"
    done
done
umask 077
relay mailbox add msk alice | tail -n 1 > msk/tokens.txt
relay mailbox add ala bob | tail -n 1 > ala/tokens.txt
relay mailbox add ber carl | tail -n 1 > ber/tokens.txt
for d in msk ala ber; do relay check "$d"; done
touch .setup-done
