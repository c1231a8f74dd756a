#!/bin/sh
# finalize.sh: PID 1 (init=) of the throwaway VM that packaging/image/build.sh boots once
# on the new disk, with the image's own kernel. It does what needs the disk as a real
# block device (no loop partitions or device-mapper on the build machine): installs the
# milvus-fleet .deb, GRUB for BIOS and UEFI on /dev/vda, then powers off. The last line on
# the serial console is FINALIZE-RC=<exit code>, which build.sh checks.
export PATH=/usr/sbin:/usr/bin:/sbin:/bin LC_ALL=C.UTF-8 DEBIAN_FRONTEND=noninteractive

# Run from a copy in /run: the script deletes itself from the disk, and a deleted file
# still open would keep the root file system from going read-only (an unclean journal).
if [ "$0" != /run/milvus-fleet-finalize ]; then
    mountpoint -q /run || mount -t tmpfs tmpfs /run
    cp "$0" /run/milvus-fleet-finalize
    exec /bin/sh /run/milvus-fleet-finalize
fi

finalize() {
    set -eu
    # The initramfs moves its /proc, /sys, /dev and /run here; mount what it did not.
    mountpoint -q /proc || mount -t proc proc /proc
    mountpoint -q /sys || mount -t sysfs sys /sys
    mountpoint -q /dev || mount -t devtmpfs dev /dev
    mountpoint -q /run || mount -t tmpfs tmpfs /run
    mount -t tmpfs tmpfs /tmp
    mount -o remount,rw /
    mount /boot/efi
    # The package: its postinst creates the user and directories; nothing is started here.
    dpkg -i /var/cache/milvus-fleet-image/milvus-fleet.deb
    rm -rf /var/cache/milvus-fleet-image
    # GRUB for both firmwares; --removable puts the EFI loader at the fallback path, so
    # no NVRAM entry is needed (a fresh VM has none).
    grub-install --target=i386-pc /dev/vda
    grub-install --target=x86_64-efi --efi-directory=/boot/efi --removable --no-nvram
    update-grub
    # Later grub-pc upgrades inside the VM reinstall to the right disk.
    echo "grub-pc grub-pc/install_devices multiselect /dev/vda" | debconf-set-selections
    # Every VM gets its own identity at first boot.
    : > /etc/machine-id
    rm -f /var/lib/dbus/machine-id /etc/ssh/ssh_host_*
    rm -f /usr/local/sbin/milvus-fleet-finalize
}

[ -c /dev/ttyS0 ] || mount -t devtmpfs dev /dev
( finalize ) > /dev/ttyS0 2>&1
rc=$?
echo "FINALIZE-RC=$rc" > /dev/ttyS0
sync
umount /boot/efi 2>/dev/null
mount -o remount,ro / || echo "FINALIZE-RO-FAILED" > /dev/ttyS0
# Power off without systemd: a double --force goes straight to reboot(2).
systemctl --force --force poweroff 2>/dev/null
echo o > /proc/sysrq-trigger
sleep 30
