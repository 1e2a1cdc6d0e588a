# Helpers every periwire-guest scenario can use (sourced before the scenario).

# The USB/IP server, as the guest sees it: QEMU forwards 10.0.2.100 to the host's loopback
# on the user-mode network; on a TAP network it is the host end of the link.
PERIWIRE_SERVER=10.0.2.100
if [ -r /etc/periwire/network ]; then
    read -r _ _ PERIWIRE_SERVER </etc/periwire/network
fi
PERIWIRE_PORT=3240
export PERIWIRE_SERVER PERIWIRE_PORT

# wait_for PATH [SECONDS]: wait until PATH exists (default 30 s); fail if it never does.
wait_for() {
    _wf_left=$((${2:-30} * 10))
    while [ ! -e "$1" ]; do
        _wf_left=$((_wf_left - 1))
        if [ "$_wf_left" -le 0 ]; then
            echo "wait_for: $1 did not appear" >&2
            return 1
        fi
        usleep 100000
    done
}

# mark WORDS...: print a line the host waits for with Guest::expect_line.
mark() {
    echo "$*"
}
