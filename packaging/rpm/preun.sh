# On erase (not upgrade), stop and disable the daemon.
if [ "$1" -eq 0 ] && [ -d /run/systemd/system ]; then
    systemctl --no-reload disable --now milvus-fleet.service >/dev/null 2>&1 || :
fi
