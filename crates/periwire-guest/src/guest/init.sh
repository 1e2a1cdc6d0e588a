#!/bin/sh
# periwire-guest /init: mount the basics, load the modules, bring up eth0, run the scenario,
# print its exit status, power off. Markers start with PERIWIRE-GUEST- (see lib.rs).
export PATH=/usr/sbin:/usr/bin:/sbin:/bin
export HOME=/root
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mkdir -p /dev/pts /dev/shm
mount -t devpts devpts /dev/pts
mount -t tmpfs tmpfs /tmp
mount -t tmpfs tmpfs /run
# usbip attach records its ports under /var/run/vhci_hcd.
mkdir -p /var
ln -sfn /run /var/run
stty -echo 2>/dev/null
read -r up _ </proc/uptime
echo "PERIWIRE-GUEST-INIT $up"

# The guest's own limit: power off even if nobody on the host is left to kill QEMU.
read -r limit </etc/periwire/limit
(
    sleep "$limit"
    echo
    echo "PERIWIRE-GUEST-WATCHDOG after ${limit}s"
    poweroff -f
) &

fail() {
    echo
    echo "PERIWIRE-GUEST-SETUP-FAILED $*"
    dmesg | tail -n 30
    poweroff -f
    sleep 60
}

while read -r mod; do
    [ -n "$mod" ] || continue
    insmod "$mod" || fail "insmod $mod"
done </etc/periwire/modules

ip link set lo up
# A guest without a network card (GuestConfig::without_network) has no eth0 to wait for.
if [ ! -e /etc/periwire/no-network ]; then
    tries=0
    while [ ! -e /sys/class/net/eth0 ]; do
        tries=$((tries + 1))
        [ "$tries" -le 100 ] || fail "no eth0"
        usleep 100000
    done
    # "ADDRESS/PREFIX GATEWAY SERVER": the user-mode network's or a TAP network's.
    read -r addr gateway _ </etc/periwire/network || fail "no /etc/periwire/network"
    ip link set eth0 up || fail "eth0 up"
    ip addr add "$addr" dev eth0 || fail "eth0 address"
    ip route add default via "$gateway" || fail "default route"
fi

read -r up _ </proc/uptime
echo "PERIWIRE-GUEST-READY $up"
cd /root
sh -e -c '. /etc/periwire/lib.sh; . /etc/periwire/scenario.sh'
status=$?
if [ "$status" -ne 0 ]; then
    echo "--- dmesg (last 30 lines) ---"
    dmesg | tail -n 30
fi
echo
echo "PERIWIRE-GUEST-EXIT $status"
poweroff -f
sleep 60
