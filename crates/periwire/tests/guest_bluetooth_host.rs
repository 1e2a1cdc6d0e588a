//! Host-linked ("socket-backed") Bluetooth adapters against the Linux kernel's Bluetooth stack.
//!
//! The guest plays the host: BlueZ's `btvirt` makes two BR/EDR controllers on one emulated
//! radio, hci0 standing for the host's physical adapter and hci1 for a remote device, with
//! bluetoothd on both. periwire runs in the same guest with `link = "host"` adapters on
//! `/dev/vhci` (hci2 and up): the "VM's" stack on hci2 talks to the remote on hci1 while every
//! channel it opens is a socket periwire holds on hci0. The remote's tools (`l2test`,
//! `rctest`, the SDP server) are BlueZ's, so every check is against software periwire did not
//! write.

mod common;

use common::{
    l2test_reports_mismatch, parse_transfer_rate, prefixed_lines, with_bt_host, with_periwire,
    BT_HOST_HELPERS, GUEST_WAIT_HELPERS, STEP,
};
use periwire_guest::{Guest, GuestConfig, GuestOutcome};

/// Frames each l2test transfer moves, and their size.
const L2_FRAMES: u64 = 300;
const L2_FRAME: u64 = 600;
/// Frames each rctest transfer moves, and their size.
const RC_FRAMES: u64 = 200;
const RC_FRAME: u64 = 1000;
/// Rounds of the side-by-side throughput comparison, each moving every transfer once straight
/// from hci0 and once through periwire.
const ROUNDS: u32 = 3;

/// PSMs and RFCOMM channels of the receivers this file adds to [`BT_HOST_HELPERS`]' own.
const SCENARIO_SETUP: &str = r#"
# Receivers for the proxied transfers, beside bt_start_receivers' ones (used direct from hci0).
BT_L2_PSM_P=4121
BT_RC_CH_P=13
PSM_NO_LISTENER=4125
PSM_CLOSING=4127
pw_adapters() { periwire adapters --data-dir /tmp/pw; }
pw_has_channel() { pw_adapters | grep -q "channel psm $1 .* open"; }
pw_no_channel() { ! pw_adapters | grep -q "channel psm $1 "; }
guest_adapter_up() {
    wait_until 120 "hci$1 from periwire" bt_mgmt_has "$1" "addr "
    btmgmt --index "$1" io-cap 3 >/dev/null
    btmgmt --index "$1" bondable on >/dev/null
    btmgmt --index "$1" ssp on >/dev/null
    btmgmt --index "$1" power on >/dev/null
    wait_until 60 "hci$1 powered" bt_mgmt_has "$1" "current settings: .*powered"
}
start_periwire() {
    mkdir -p /tmp/pw
    cat >/tmp/pw/periwire.toml
    RUST_LOG=periwire_bt=debug,periwire_hci=debug,info periwire serve --config /tmp/pw/periwire.toml --data-dir /tmp/pw >/tmp/pw/log 2>&1 &
    PW_PID=$!
}
"#;

fn boot(scenario: String) -> Guest {
    let config = with_periwire(with_bt_host(GuestConfig::new(scenario)))
        .memory_mib(768)
        .timeout(std::time::Duration::from_secs(900));
    Guest::boot(config).expect("boot the host guest")
}

fn text(outcome: &GuestOutcome, prefix: &str) -> String {
    prefixed_lines(&outcome.transcript, prefix).join("\n")
}

/// Asserts `log` (an l2test receiver log) counted `bytes` exactly and returns its rate in
/// kB/s.
fn received(log: &str, bytes: u64, what: &str) -> f64 {
    let rate = parse_transfer_rate(log);
    assert_eq!(rate.bytes, bytes, "{what}: every byte arrived:\n{log}");
    assert!(
        !l2test_reports_mismatch(log),
        "{what}: frames arrived corrupted:\n{log}"
    );
    rate.kb_per_sec()
}

/// Asserts `log` (an rctest receiver log, of a sender that was stopped once enough had
/// arrived) counted at least `bytes` and returns its rate in kB/s.
fn received_at_least(log: &str, bytes: u64, what: &str) -> f64 {
    let rate = parse_transfer_rate(log);
    assert!(rate.bytes >= bytes, "{what}: {bytes} bytes arrived:\n{log}");
    assert!(
        !l2test_reports_mismatch(log),
        "{what}: frames arrived corrupted:\n{log}"
    );
    rate.kb_per_sec()
}

/// One host-linked adapter carries l2test and rctest both ways and an SDP query, refuses a PSM
/// nobody listens on, follows the remote's and the guest's closes, and pairs through the host
/// with a proxy key that a second connection reuses.
#[test]
fn host_linked_adapter_carries_l2cap_rfcomm_sdp_and_pairing() {
    let l2_total = L2_FRAMES * L2_FRAME;
    let rc_total = RC_FRAMES * RC_FRAME;
    let scenario = format!(
        r#"{GUEST_WAIT_HELPERS}{BT_HOST_HELPERS}{SCENARIO_SETUP}
        BT_L2_FRAMES={L2_FRAMES}; BT_L2_FRAME={L2_FRAME}; BT_L2_CHUNK=$((BT_L2_FRAME * 10))
        # RFCOMM senders run until the receiver has {rc_total} bytes, then are killed: an
        # rctest that ends by itself may reset the session before its last frames are out.
        BT_RC_FRAMES=1000000; BT_RC_FRAME={RC_FRAME}; BT_RC_CHUNK=$((BT_RC_FRAME * 10))
        bt_host_up
        bt_start_receivers
        l2test -r -i hci1 -P "$BT_L2_PSM_P" -b "$BT_L2_CHUNK" >/tmp/bt/l2p.log 2>&1 &
        rctest -r -i hci1 -P "$BT_RC_CH_P" -b "$BT_RC_CHUNK" >/tmp/bt/rcp.log 2>&1 &
        # The closing remote paces its 5 frames (200 ms apart): one that closes the moment it
        # accepts can beat the guest's connect() to its wake-up, which then fails with
        # ECONNRESET as it would straight from hci0.
        l2test -w -i hci1 -P "$PSM_CLOSING" -b 100 -N 5 -C 1 -D 200 >/tmp/bt/l2close.log 2>&1 &
        for l in l2p rcp l2close; do
            wait_until 60 "$l listening" bt_logged /tmp/bt/$l.log "Waiting for connection"
        done

        # The baseline: the same transfers straight from hci0, before periwire runs.
        l2test -s -i hci0 -P "$BT_L2_PSM" -b "$BT_L2_FRAME" -N "$BT_L2_FRAMES" -g 600000 "$BT_HCI1" >/tmp/bt/direct-l2s.log 2>&1 &
        s=$!
        bt_wait_bytes 200 /tmp/bt/l2r.log {l2_total}
        kill $s
        rctest -s -i hci0 -P "$BT_RC_CH" -b "$BT_RC_FRAME" -N "$BT_RC_FRAMES" -L 30 "$BT_HCI1" >/tmp/bt/direct-rcs.log 2>&1 &
        s=$!
        bt_wait_bytes 200 /tmp/bt/rcr.log {rc_total}
        kill $s 2>/dev/null || true
        l2test -u -i hci0 -P "$BT_L2_PSM_W" -b "$BT_L2_CHUNK" "$BT_HCI1" >/tmp/bt/direct-l2u.log 2>&1 &
        s=$!
        bt_wait_bytes 200 /tmp/bt/direct-l2u.log {l2_total}
        kill $s
        rctest -u -i hci0 -P "$BT_RC_CH_W" -b "$BT_RC_CHUNK" "$BT_HCI1" >/tmp/bt/direct-rcu.log 2>&1 &
        s=$!
        bt_wait_bytes 200 /tmp/bt/direct-rcu.log {rc_total}
        kill $s 2>/dev/null || true
        mark DIRECT-DONE

        start_periwire <<EOF
[[adapter]]
name = "vm-a"
transport = "vhci"
address = "00:50:57:00:02:0A"
link = "host"
host_adapter = "hci0"
EOF
        guest_adapter_up 2
        sed 's/^/SERVE /' /tmp/pw/log

        # 1. l2test to the remote and back, through periwire.
        l2test -s -i hci2 -P "$BT_L2_PSM_P" -b "$BT_L2_FRAME" -N "$BT_L2_FRAMES" -g 600000 "$BT_HCI1" >/tmp/bt/l2s.log 2>&1 &
        s=$!
        bt_wait_bytes 200 /tmp/bt/l2p.log {l2_total} || {{ bt_dump L2S /tmp/bt/l2s.log; sed 's/^/SERVE /' /tmp/pw/log; exit 1; }}
        pw_adapters | sed 's/^/ADAPTERS-L2 /'
        kill $s
        l2test -u -i hci2 -P "$BT_L2_PSM_W" -b "$BT_L2_CHUNK" "$BT_HCI1" >/tmp/bt/l2u.log 2>&1 &
        s=$!
        bt_wait_bytes 200 /tmp/bt/l2u.log {l2_total} || {{ pw_adapters | sed 's/^/ADAPTERS-U /'; bt_dump L2W /tmp/bt/l2w.log; sed 's/^/SERVE /' /tmp/pw/log; exit 1; }}
        kill $s
        mark L2CAP-DONE

        # RFCOMM rides in the guest's own PSM 3 channel.
        rctest -s -i hci2 -P "$BT_RC_CH_P" -b "$BT_RC_FRAME" -N "$BT_RC_FRAMES" -L 30 "$BT_HCI1" >/tmp/bt/rcs.log 2>&1 &
        s=$!
        bt_wait_bytes 200 /tmp/bt/rcp.log {rc_total} || {{ bt_dump RCS /tmp/bt/rcs.log; exit 1; }}
        kill $s 2>/dev/null || true
        rctest -u -i hci2 -P "$BT_RC_CH_W" -b "$BT_RC_CHUNK" "$BT_HCI1" >/tmp/bt/rcu.log 2>&1 &
        s=$!
        bt_wait_bytes 200 /tmp/bt/rcu.log {rc_total}
        kill $s 2>/dev/null || true
        mark RFCOMM-DONE

        # Throughput side by side: each transfer straight from hci0 and through periwire, in
        # alternating order, round after round, so that a load change on the machine running
        # QEMU falls on both. The receivers on the remote log every connection into one file:
        # a round keeps only the lines it added, and the checks above read their logs as
        # they were before the rounds.
        for l in l2r rcr l2p rcp; do cp "/tmp/bt/$l.log" "/tmp/bt/$l-checked.log"; done
        since() {{ tail -n +$(($2 + 1)) "$1"; }}
        lines() {{ wc -l <"$1"; }}
        # to_remote ROUND NAME HCI TOOL PORT LOG: one sender run until LOG gained the total.
        to_remote() {{
            n=$(lines "$6"); base=$(bt_sum_bytes "$6")
            case $4 in
                l2) l2test -s -i "$3" -P "$5" -b "$BT_L2_FRAME" -N 1000000 -g 600000 "$BT_HCI1" >/dev/null 2>&1 & ;;
                rc) rctest -s -i "$3" -P "$5" -b "$BT_RC_FRAME" -N 1000000 -L 30 "$BT_HCI1" >/dev/null 2>&1 & ;;
            esac
            s=$!
            bt_wait_bytes 200 "$6" $((base + $7))
            kill $s 2>/dev/null || true
            since "$6" "$n" >"/tmp/bt/round-$1-$2.log"
        }}
        # from_remote ROUND NAME HCI TOOL PORT: one receiver run until it has the total.
        from_remote() {{
            case $4 in
                l2) l2test -u -i "$3" -P "$5" -b "$BT_L2_CHUNK" "$BT_HCI1" >"/tmp/bt/round-$1-$2.log" 2>&1 & ;;
                rc) rctest -u -i "$3" -P "$5" -b "$BT_RC_CHUNK" "$BT_HCI1" >"/tmp/bt/round-$1-$2.log" 2>&1 & ;;
            esac
            s=$!
            bt_wait_bytes 200 "/tmp/bt/round-$1-$2.log" "$6"
            kill $s 2>/dev/null || true
        }}
        for r in $(seq 1 {ROUNDS}); do
            for way in direct proxied; do
                [ $((r % 2)) = 0 ] && way=$([ $way = direct ] && echo proxied || echo direct)
                if [ $way = direct ]; then hci=hci0; l2=$BT_L2_PSM; rc=$BT_RC_CH; l2log=l2r; rclog=rcr
                else hci=hci2; l2=$BT_L2_PSM_P; rc=$BT_RC_CH_P; l2log=l2p; rclog=rcp; fi
                to_remote "$r" "$way-l2-to" "$hci" l2 "$l2" "/tmp/bt/$l2log.log" {l2_total}
                from_remote "$r" "$way-l2-from" "$hci" l2 "$BT_L2_PSM_W" {l2_total}
                to_remote "$r" "$way-rc-to" "$hci" rc "$rc" "/tmp/bt/$rclog.log" {rc_total}
                from_remote "$r" "$way-rc-from" "$hci" rc "$BT_RC_CH_W" {rc_total}
            done
        done
        for f in /tmp/bt/round-*.log; do n=${{f#/tmp/bt/round-}}; bt_dump "ROUND-${{n%.log}}" "$f"; done
        mark ROUNDS-DONE

        sdptool -i hci2 browse "$BT_HCI1" 2>&1 | sed 's/^/SDP /'

        # 2. No listener; the remote closing; the guest closing.
        l2test -n -i hci2 -P "$PSM_NO_LISTENER" "$BT_HCI1" 2>&1 | sed 's/^/NO-LISTENER /' || true
        l2test -u -i hci2 -P "$PSM_CLOSING" -b 100 "$BT_HCI1" >/tmp/bt/l2closed.log 2>&1 &
        s=$!
        wait_until 120 "the guest's l2test to end when the remote closes" exited $s
        bt_dump REMOTE-CLOSED /tmp/bt/l2closed.log
        if grep -q "Can't connect" /tmp/bt/l2closed.log; then sed 's/^/CLOSED-SERVE /' /tmp/pw/log | tail -60; fi
        l2test -n -i hci2 -P "$BT_L2_PSM" "$BT_HCI1" >/tmp/bt/l2n.log 2>&1 &
        s=$!
        wait_until 120 "a channel to psm 0x1011 in periwire" pw_has_channel 0x1011
        pw_adapters | sed 's/^/ADAPTERS-HELD /'
        kill $s
        wait_until 120 "periwire to close the host socket" pw_no_channel 0x1011
        pw_adapters | sed 's/^/ADAPTERS-RELEASED /'
        mark CLOSES-DONE

        # 4. Pairing through the host (BlueZ bonds, as for any device it pairs); the proxy key
        # serves a second connection.
        # The link the transfers left up holds a key of their own (Secure Simple Pairing
        # encrypts every channel but SDP); BlueZ bonds on a fresh link.
        hcitool -i hci2 dc "$BT_HCI1" || true
        wait_until 60 "the guest's link to drop" sh -c '! hcitool -i hci2 con | grep -q "$BT_HCI1"'
        btmgmt --timeout 30 --index 2 pair -c 3 -t 0 "$BT_HCI1" 2>&1 | sed 's/^/PAIR /'
        pw_adapters | sed 's/^/ADAPTERS-PAIRED /'
        guest_key() {{ sed -n 's/^Key=//p' "/var/lib/bluetooth/00:50:57:00:02:0A/$BT_HCI1/info" 2>/dev/null; }}
        # btmgmt returns on the kernel's event; bluetoothd and periwire store the key after.
        wait_until 30 "bluetoothd to store the guest's key" sh -c "grep -q '^Key=' '/var/lib/bluetooth/00:50:57:00:02:0A/$BT_HCI1/info'"
        wait_until 30 "periwire to store the proxy key" test -s /tmp/pw/bt-keys/00-50-57-00-02-0A.keys
        sed 's/^/KEYS-1 /' /tmp/pw/bt-keys/00-50-57-00-02-0A.keys
        sed 's/^/SERVE /' /tmp/pw/log
        host_key() {{ sed -n 's/^Key=//p' "/var/lib/bluetooth/$BT_HCI0/$BT_HCI1/info"; }}
        find /var/lib/bluetooth -type f | sed 's/^/BTSTORE /'
        echo "GUEST-KEY-1 $(guest_key)"
        echo "HOST-KEY $(host_key)"
        # The guest's link goes; a new one authenticates with the stored proxy key.
        hcitool -i hci2 dc "$BT_HCI1" || true
        wait_until 60 "the guest's link to drop" sh -c '! hcitool -i hci2 con | grep -q "$BT_HCI1"'
        l2test -n -E -i hci2 -P "$BT_L2_PSM" "$BT_HCI1" >/tmp/bt/l2e2.log 2>&1 &
        s=$!
        wait_until 180 "an encrypted channel again" pw_has_channel 0x1011 || {{ bt_dump L2E2 /tmp/bt/l2e2.log; sed 's/^/SERVE /' /tmp/pw/log; exit 1; }}
        pw_adapters | sed 's/^/ADAPTERS-REAUTH /'
        kill $s
        echo "GUEST-KEY-2 $(guest_key)"
        sed 's/^/KEYS-2 /' /tmp/pw/bt-keys/00-50-57-00-02-0A.keys
        mark PAIRED

        for l in l2r rcr direct-l2u direct-rcu l2p l2u rcp rcu; do
            f=/tmp/bt/$l.log; [ -e "/tmp/bt/$l-checked.log" ] && f=/tmp/bt/$l-checked.log
            bt_dump "LOG-$l" "$f"
        done
        "#
    );
    let mut guest = boot(scenario);
    guest
        .expect_line("DIRECT-DONE", STEP * 3)
        .expect("direct transfers");
    guest
        .expect_line("L2CAP-DONE", STEP * 2)
        .expect("l2test through periwire");
    guest
        .expect_line("RFCOMM-DONE", STEP * 2)
        .expect("rctest through periwire");
    guest
        .expect_line("ROUNDS-DONE", STEP * 6)
        .expect("throughput rounds");
    guest.expect_line("CLOSES-DONE", STEP * 2).expect("closes");
    guest.expect_line("PAIRED", STEP * 2).expect("pairing");
    let outcome = guest.wait_success(STEP).expect("scenario succeeds");
    let log = |name: &str| text(&outcome, &format!("LOG-{name} "));

    // 1. Every byte both ways: l2test checks each frame's sequence number, size and pattern;
    // rctest only counts (its checks are compiled out), but its RFCOMM frames ride in an
    // L2CAP channel carried the same way as l2test's.
    let direct_l2 = received(&log("l2r"), l2_total, "l2test hci0 -> remote");
    let direct_l2u = received(&log("direct-l2u"), l2_total, "l2test remote -> hci0");
    let direct_rc = received_at_least(&log("rcr"), rc_total, "rctest hci0 -> remote");
    let direct_rcu = received_at_least(&log("direct-rcu"), rc_total, "rctest remote -> hci0");
    let proxied_l2 = received(&log("l2p"), l2_total, "l2test guest -> remote via periwire");
    let proxied_l2u = received(&log("l2u"), l2_total, "l2test remote -> guest via periwire");
    let proxied_rc =
        received_at_least(&log("rcp"), rc_total, "rctest guest -> remote via periwire");
    let proxied_rcu =
        received_at_least(&log("rcu"), rc_total, "rctest remote -> guest via periwire");
    let held = text(&outcome, "ADAPTERS-L2 ");
    assert!(
        held.contains("(host:hci0)")
            && held.contains("channel psm 0x1019")
            && held.contains("180000 B sent"),
        "periwire adapters shows the link and the live channel:\n{held}"
    );
    let sdp = text(&outcome, "SDP ");
    assert!(
        sdp.contains("Service Name: Serial Port") && sdp.contains("Channel: 11"),
        "the remote's SDP records reach the guest:\n{sdp}"
    );

    // 2. Refusal and closes.
    let refused = text(&outcome, "NO-LISTENER ");
    assert!(
        refused.contains("Connection refused"),
        "a PSM without listener is refused (PSM not supported):\n{refused}"
    );
    let closed = text(&outcome, "REMOTE-CLOSED ");
    assert!(
        closed.contains("Receiving"),
        "the channel opened:\n{closed}\n{}",
        text(&outcome, "CLOSED-SERVE ")
    );
    let released = text(&outcome, "ADAPTERS-RELEASED ");
    assert!(
        !released.contains("channel psm 0x1011"),
        "the guest's close closed the host socket:\n{released}"
    );

    // 4. Pairing through the host: the guest holds periwire's proxy key, not the host's, and
    // the second link authenticates with it.
    let first = text(&outcome, "GUEST-KEY-1 ");
    let second = text(&outcome, "GUEST-KEY-2 ");
    let host_key = text(&outcome, "HOST-KEY ");
    let stored = text(&outcome, "KEYS-1 ");
    assert!(
        first.len() == 32,
        "the guest stored a link key: {first:?}\n{}\n{}\n{}",
        text(&outcome, "BTSTORE "),
        text(&outcome, "PAIR "),
        text(&outcome, "SERVE ")
    );
    // The host's own key is not compared: whether bluetoothd keeps it depends on how the
    // kernel paired (see the closing note of issue 7).
    let _ = host_key;
    assert!(
        stored.to_lowercase().contains(&first.to_lowercase()),
        "periwire stored the proxy key the guest holds:\n{stored}\nguest: {first}"
    );
    assert_eq!(first, second, "no new pairing for the second link");
    assert_eq!(
        stored,
        text(&outcome, "KEYS-2 "),
        "the key store is unchanged"
    );
    let reauth = text(&outcome, "ADAPTERS-REAUTH ");
    assert!(
        reauth.contains("encrypted"),
        "the second link is encrypted:\n{reauth}"
    );

    // Throughput, round by round, and the median of the rounds' ratios.
    let first = [
        (direct_l2, proxied_l2),
        (direct_l2u, proxied_l2u),
        (direct_rc, proxied_rc),
        (direct_rcu, proxied_rcu),
    ];
    let mut table = String::from(
        "throughput (kB/s), straight from hci0 | through periwire (ratio); round 0 is the \
         checked transfers before the rounds\n",
    );
    for (row, (name, key, total)) in [
        ("l2test to remote  ", "l2-to", l2_total),
        ("l2test from remote", "l2-from", l2_total),
        ("rctest to remote  ", "rc-to", rc_total),
        ("rctest from remote", "rc-from", rc_total),
    ]
    .into_iter()
    .enumerate()
    {
        let mut ratios = vec![first[row].1 / first[row].0];
        table += &format!(
            "{name} r0 {:7.1} | {:7.1} ({:.2})\n",
            first[row].0, first[row].1, ratios[0]
        );
        for round in 1..=ROUNDS {
            let rate = |way: &str| {
                let log = text(&outcome, &format!("ROUND-{round}-{way}-{key} "));
                received_at_least(&log, total, &format!("round {round} {way} {key}"))
            };
            let (direct, proxied) = (rate("direct"), rate("proxied"));
            ratios.push(proxied / direct);
            table += &format!(
                "{name} r{round} {direct:7.1} | {proxied:7.1} ({:.2})\n",
                proxied / direct
            );
        }
        ratios.sort_by(f64::total_cmp);
        table += &format!("{name} median ratio {:.2}\n", ratios[ratios.len() / 2]);
    }
    println!("{table}");
}

/// Two host-linked adapters ("two VMs") share the host's one controller: a remote's
/// connections to the PSMs one of them accepts reach that guest (both ways, every frame
/// checked); both stream to the same remote at once, each on its own host sockets, and when
/// one goes (powered off by its guest) the other's transfer carries on intact.
#[test]
fn two_host_linked_adapters_share_the_host_and_accept_incoming_channels() {
    let in_total = L2_FRAMES * L2_FRAME;
    // How far each stream must get before the second adapter goes, and what the first moves
    // in all.
    let before = 60 * L2_FRAME;
    // What vm-a must still move after vm-b went; its sender runs until then.
    let after = 120 * L2_FRAME;
    let scenario = format!(
        r#"{GUEST_WAIT_HELPERS}{BT_HOST_HELPERS}{SCENARIO_SETUP}
        BT_L2_FRAMES={L2_FRAMES}; BT_L2_FRAME={L2_FRAME}; BT_L2_CHUNK=$((BT_L2_FRAME * 10))
        PSM_IN_R=4145; PSM_IN_W=4147; PSM_A=4131; PSM_B=4133
        bt_host_up
        # The remote pages the host's adapter for the incoming channels.
        btmgmt --index 0 connectable on >/dev/null
        # The remote's receivers are basic mode, which has no flow control: one guest CPU
        # running two senders and both receivers could overrun a receiver's socket buffer, and
        # the remote's kernel drops what does not fit. Large buffers and paced senders keep
        # the check about periwire, not about the guest's scheduler.
        echo 8388608 >/proc/sys/net/core/rmem_max
        l2test -r -H 8388608 -i hci1 -P "$PSM_A" -b "$BT_L2_CHUNK" >/tmp/bt/a.log 2>&1 &
        l2test -r -H 8388608 -i hci1 -P "$PSM_B" -b "$BT_L2_CHUNK" >/tmp/bt/b.log 2>&1 &
        for l in a b; do
            wait_until 60 "$l listening" bt_logged /tmp/bt/$l.log "Waiting for connection" || {{ bt_dump "LISTEN-$l" /tmp/bt/$l.log; exit 1; }}
        done

        start_periwire <<EOF
[[adapter]]
name = "vm-a"
transport = "vhci"
address = "00:50:57:00:02:0A"
link = "host"
host_adapter = "hci0"
accept_psms = [$PSM_IN_R, $PSM_IN_W]

[[adapter]]
name = "vm-b"
transport = "vhci"
address = "00:50:57:00:02:0B"
link = "host"
host_adapter = "hci0"
EOF
        index_of() {{ for i in 2 3; do bt_mgmt_has $i "addr $1" && echo $i && return 0; done; return 1; }}
        wait_until 120 "both adapters from periwire" bt_mgmt_has 3 "addr "
        A=$(index_of 00:50:57:00:02:0A); B=$(index_of 00:50:57:00:02:0B)
        echo "INDEXES a=hci$A b=hci$B"
        guest_adapter_up "$A"
        guest_adapter_up "$B"
        btmgmt --index "$A" connectable on >/dev/null
        btmon -i "hci$A" >/tmp/bt/btmon-a.log 2>&1 &
        wait_until 60 "periwire listening for vm-a" grep -q "accepting remotes' connections" /tmp/pw/log
        sed 's/^/SERVE /' /tmp/pw/log

        # Incoming: the remote connects to the host's adapter; vm-a's guest takes the channel.
        l2test -r -i "hci$A" -P "$PSM_IN_R" -b "$BT_L2_CHUNK" >/tmp/bt/in-r.log 2>&1 &
        l2test -w -i "hci$A" -P "$PSM_IN_W" -b "$BT_L2_FRAME" -N "$BT_L2_FRAMES" -g 600000 >/tmp/bt/in-w.log 2>&1 &
        for l in in-r in-w; do
            wait_until 60 "$l listening" bt_logged /tmp/bt/$l.log "Waiting for connection"
        done
        l2test -s -i hci1 -P "$PSM_IN_R" -b "$BT_L2_FRAME" -N "$BT_L2_FRAMES" -g 600000 "$BT_HCI0" >/tmp/bt/in-s.log 2>&1 &
        s=$!
        bt_wait_bytes 60 /tmp/bt/in-r.log {in_total} || {{ bt_dump IN-S /tmp/bt/in-s.log; grep -E "HCI Event|HCI Command|L2CAP:|Result|Status|Encryption|Reason" /tmp/bt/btmon-a.log | head -150 | sed 's/^/BTMON /'; btmgmt --index "$A" info | sed 's/^/INFO-A /'; pw_adapters | sed 's/^/ADAPTERS-IN /'; sed 's/^/SERVE /' /tmp/pw/log; exit 1; }}
        pw_adapters | sed 's/^/ADAPTERS-IN /'
        kill $s
        l2test -u -i hci1 -P "$PSM_IN_W" -b "$BT_L2_CHUNK" "$BT_HCI0" >/tmp/bt/in-u.log 2>&1 &
        s=$!
        bt_wait_bytes 200 /tmp/bt/in-u.log {in_total} || {{ bt_dump IN-W /tmp/bt/in-w.log; sed 's/^/SERVE /' /tmp/pw/log; exit 1; }}
        kill $s
        mark INCOMING-DONE

        # Both adapters stream to the same remote at once, ten frames every 50 ms each.
        l2test -s -C 10 -D 50 -i "hci$A" -P "$PSM_A" -b "$BT_L2_FRAME" -N 1000000 -g 600000 "$BT_HCI1" >/tmp/bt/as.log 2>&1 &
        sa=$!
        l2test -s -C 10 -D 50 -i "hci$B" -P "$PSM_B" -b "$BT_L2_FRAME" -N 1000000 -g 600000 "$BT_HCI1" >/tmp/bt/bs.log 2>&1 &
        sb=$!
        bt_wait_bytes 200 /tmp/bt/a.log {before}
        bt_wait_bytes 200 /tmp/bt/b.log {before}
        pw_adapters | sed 's/^/ADAPTERS-BOTH /'
        # vm-b goes; vm-a carries on.
        a_cut=$(bt_sum_bytes /tmp/bt/a.log)
        echo "A-AT-CUT $a_cut"
        btmgmt --index "$B" power off >/dev/null
        wait_until 60 "vm-b's sender to fail" exited $sb
        wait_until 60 "vm-b's host socket to close" pw_no_channel 0x1025
        pw_adapters | sed 's/^/ADAPTERS-ONE /'
        bt_wait_bytes 200 /tmp/bt/a.log $((a_cut + {after}))
        kill $sa
        mark SHARED-DONE
        for l in a b in-r in-u; do bt_dump "LOG-$l" /tmp/bt/$l.log; done
        "#
    );
    let mut guest = boot(scenario);
    if let Err(e) = guest.expect_line("INCOMING-DONE", STEP * 3) {
        for l in guest.transcript() {
            println!("{}", l.text);
        }
        panic!("incoming channels: {e}");
    }
    guest
        .expect_line("SHARED-DONE", STEP * 3)
        .expect("two adapters at once");
    let outcome = guest.wait_success(STEP).expect("scenario succeeds");
    let log = |name: &str| text(&outcome, &format!("LOG-{name} "));

    received(
        &log("in-r"),
        in_total,
        "l2test remote -> guest on an accepted PSM",
    );
    received(
        &log("in-u"),
        in_total,
        "l2test guest -> remote on an accepted PSM",
    );
    let incoming = text(&outcome, "ADAPTERS-IN ");
    assert!(
        incoming.contains("channel psm 0x1031") && incoming.contains("incoming"),
        "periwire adapters shows the incoming channel:\n{incoming}"
    );

    let both = text(&outcome, "ADAPTERS-BOTH ");
    assert!(
        both.contains("channel psm 0x1023") && both.contains("channel psm 0x1025"),
        "each adapter holds its own channel:\n{both}"
    );
    let one = text(&outcome, "ADAPTERS-ONE ");
    assert!(
        one.contains("channel psm 0x1023") && !one.contains("channel psm 0x1025"),
        "only vm-b's channel closed:\n{one}"
    );
    let b = log("b");
    assert!(
        !l2test_reports_mismatch(&b),
        "vm-b's stream arrived corrupted:\n{b}"
    );
    let cut: u64 = text(&outcome, "A-AT-CUT ")
        .trim()
        .parse()
        .expect("vm-a's bytes when vm-b went");
    // l2test checks every frame's sequence number, size and pattern.
    received_at_least(&log("a"), cut + after, "vm-a's stream, on after vm-b went");
}

/// The real VM shape: periwire in the "host" guest exports a host-linked USB dongle over
/// USB/IP; a second guest (the VM) attaches it with the stock `usbip` through vhci-hcd, its
/// `btusb` binds it, and its BlueZ moves l2test data to the remote both ways, every frame
/// checked, through the host's adapter.
#[test]
fn a_second_guest_uses_a_host_linked_dongle_over_usbip() {
    let total = L2_FRAMES * L2_FRAME;
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free loopback port")
        .port();
    let host_scenario = format!(
        r#"{GUEST_WAIT_HELPERS}{BT_HOST_HELPERS}{SCENARIO_SETUP}
        BT_L2_FRAMES={L2_FRAMES}; BT_L2_FRAME={L2_FRAME}; BT_L2_CHUNK=$((BT_L2_FRAME * 10))
        bt_host_up
        bt_start_receivers
        start_periwire <<EOF
listen = "0.0.0.0:3240"
# The VM's connections arrive through QEMU's user network, from its gateway.
plain_allow = ["10.0.2.0/24"]

[[adapter]]
name = "vm-dongle"
transport = "usb"
busid = "1-1"
address = "00:50:57:00:02:0C"
link = "host"
host_adapter = "hci0"
EOF
        wait_until 60 "periwire serving" grep -q "serving" /tmp/pw/log
        mark HOST-READY
        bt_wait_bytes 300 /tmp/bt/l2r.log {total} || {{ sed 's/^/SERVE /' /tmp/pw/log; exit 1; }}
        pw_adapters | sed 's/^/ADAPTERS /'
        mark RECEIVED
        read -r _
        bt_dump LOG-l2r /tmp/bt/l2r.log
        "#
    );
    let mut host = Guest::boot(
        with_periwire(with_bt_host(GuestConfig::new(host_scenario)))
            .memory_mib(768)
            .expose(3240, port)
            .timeout(std::time::Duration::from_secs(900)),
    )
    .expect("boot the host guest");
    host.expect_line("HOST-READY", STEP * 2)
        .expect("host guest ready");
    let remote = prefixed_lines(host.transcript(), "BT-ADDR hci1 ")
        .first()
        .cloned()
        .expect("the remote's address");

    let vm_scenario = format!(
        r#"{GUEST_WAIT_HELPERS}{BT_HOST_HELPERS}
        usbip attach -r "$PERIWIRE_SERVER" -b 1-1
        wait_until 300 "btusb's controller" bt_mgmt_has 0 "addr "
        btmgmt --index 0 io-cap 3 >/dev/null
        btmgmt --index 0 bondable on >/dev/null
        btmgmt --index 0 ssp on >/dev/null
        btmgmt --index 0 power on >/dev/null
        btmgmt --index 0 info | sed 's/^/INFO /'
        l2test -s -i hci0 -P 4113 -b {L2_FRAME} -N {L2_FRAMES} -g 600000 {remote} >/tmp/bt/send.log 2>&1 &
        s=$!
        mark SENDING
        read -r _
        kill $s
        l2test -u -i hci0 -P 4115 -b $(({L2_FRAME} * 10)) {remote} >/tmp/bt/recv.log 2>&1 &
        s=$!
        bt_wait_bytes 300 /tmp/bt/recv.log {total} || {{ bt_dump SEND /tmp/bt/send.log; exit 1; }}
        kill $s
        bt_dump LOG-recv /tmp/bt/recv.log
        "#
    );
    let mut vm = Guest::boot(
        GuestConfig::new(vm_scenario)
            .modules(["vhci-hcd", "btusb"])
            .server_port(port),
    )
    .expect("boot the VM guest");
    vm.expect_line("SENDING", STEP * 2).expect("the VM sends");
    host.expect_line("RECEIVED", STEP * 2)
        .expect("the remote received the VM's frames");
    vm.send_line("next").expect("console");
    let vm_outcome = vm.wait_success(STEP * 2).expect("the VM received");
    host.send_line("done").expect("console");
    let host_outcome = host.wait_success(STEP).expect("host guest succeeds");

    let info = text(&vm_outcome, "INFO ");
    assert!(
        info.contains("addr 00:50:57:00:02:0C"),
        "btusb bound the host-linked dongle:\n{info}"
    );
    received(
        &text(&host_outcome, "LOG-l2r "),
        total,
        "l2test VM -> remote through the dongle",
    );
    received(
        &text(&vm_outcome, "LOG-recv "),
        total,
        "l2test remote -> VM through the dongle",
    );
    let adapters = text(&host_outcome, "ADAPTERS ");
    assert!(
        adapters.contains("vm-dongle") || adapters.contains("00:50:57:00:02:0C"),
        "periwire adapters shows the dongle's adapter:\n{adapters}"
    );
    assert!(
        adapters.contains("(host:hci0)") && adapters.contains("channel psm 0x1011"),
        "its link is the host's and it holds the channel:\n{adapters}"
    );
}

/// Discovery through the host: a guest's inquiry and remote name requests are answered with
/// what the host's adapter knows and finds: through bluetoothd while it runs (so a device the
/// host has paired is listed even when it no longer answers inquiries), the kernel's own
/// inquiry once it is gone.
#[test]
fn a_host_linked_guest_discovers_what_the_host_finds() {
    let scenario = format!(
        r#"{GUEST_WAIT_HELPERS}{BT_HOST_HELPERS}{SCENARIO_SETUP}
        bt_host_up
        btmgmt --index 1 name periwire-remote >/dev/null
        start_periwire <<EOF
[[adapter]]
name = "vm-a"
transport = "vhci"
address = "00:50:57:00:02:0A"
link = "host"
host_adapter = "hci0"
EOF
        guest_adapter_up 2
        # 1. bluetoothd's discovery finds the remote.
        hcitool -i hci2 scan 2>&1 | sed 's/^/INQUIRY-FOUND /'
        grep -i "inquir\|bluez\|discover" /tmp/pw/log | sed "s/^/PW-LOG /"
        # 2. The host pairs with it; it stops answering inquiries, bluetoothd still knows it.
        btmgmt --timeout 30 --index 0 pair -c 3 -t 0 "$BT_HCI1" 2>&1 | sed 's/^/HOST-PAIR /'
        btmgmt --index 1 discov off >/dev/null
        hcitool -i hci2 scan 2>&1 | sed 's/^/INQUIRY-KNOWN /'
        # 3. Without bluetoothd the kernel's inquiry finds the remote, discoverable again.
        kill $(pidof bluetoothd)
        wait_until 30 "bluetoothd gone" sh -c '! pidof bluetoothd'
        for i in 0 1 2; do btmgmt --index $i power on >/dev/null; done
        btmgmt --index 1 connectable on >/dev/null
        btmgmt --index 1 discov on >/dev/null
        hcitool -i hci2 scan 2>&1 | sed 's/^/INQUIRY-KERNEL /'
        grep "guest inquiry through" /tmp/pw/log | sed 's/^/INQUIRY-PATH /'
        mark DISCOVERED
        "#
    );
    let mut guest = boot(scenario);
    guest
        .expect_line("DISCOVERED", STEP * 4)
        .expect("discovery");
    let outcome = guest.wait_success(STEP).expect("scenario succeeds");
    let remote = text(&outcome, "BT-ADDR hci1 ");
    for (step, what) in [
        ("INQUIRY-FOUND ", "found by bluetoothd"),
        (
            "INQUIRY-KNOWN ",
            "known to bluetoothd (paired, not discoverable)",
        ),
        ("INQUIRY-KERNEL ", "found by the kernel's inquiry"),
    ] {
        let inquiry = text(&outcome, step);
        assert!(
            inquiry.contains(&remote) && inquiry.contains("periwire-remote"),
            "the guest's inquiry listed the remote ({remote}) with its name, {what}:\n{inquiry}\n{}", text(&outcome, "PW-LOG ")
        );
    }
    let paths: Vec<&str> = prefixed_lines(&outcome.transcript, "INQUIRY-PATH ")
        .iter()
        .map(|l| {
            if l.contains("through bluetoothd") {
                "bluetoothd"
            } else {
                "kernel"
            }
        })
        .collect();
    assert_eq!(
        paths,
        ["bluetoothd", "bluetoothd", "kernel"],
        "each inquiry took the expected path:\n{}",
        text(&outcome, "INQUIRY-PATH ")
    );
}
