# The daemon's user and directories (RPM has no dh fragments; rpm >= 4.19 also makes
# the user from the package's user() provides). Not enabled: `milvus-fleet init`
# or `join` enables and starts the unit.
systemd-sysusers /usr/lib/sysusers.d/milvus-fleet.conf >/dev/null 2>&1 || :
systemd-tmpfiles --create /usr/lib/tmpfiles.d/milvus-fleet.conf >/dev/null 2>&1 || :
if [ -d /run/systemd/system ]; then
    systemctl daemon-reload >/dev/null 2>&1 || :
fi
