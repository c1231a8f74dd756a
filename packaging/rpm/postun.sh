# After an upgrade, restart a running daemon on the new binary. On erase, state in
# /var/lib/milvus-fleet stays, as RPM convention has it.
if [ -d /run/systemd/system ]; then
    systemctl daemon-reload >/dev/null 2>&1 || :
    if [ "$1" -ge 1 ]; then
        systemctl try-restart milvus-fleet.service >/dev/null 2>&1 || :
    fi
fi
