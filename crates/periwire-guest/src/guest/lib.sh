# Helpers every periwire-guest scenario can use (sourced before the scenario).

# The USB/IP server, as the guest sees it (QEMU forwards it to the host's loopback).
PERIWIRE_SERVER=10.0.2.100
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
