//! Isochronous OUT end to end: QEMU's `usb-audio` (a USB Audio Class 1 speaker on the
//! guest's xHCI) records what reaches it into a WAV file on the host (`-audiodev wav`). In
//! the guest, `aplay` plays a 1 kHz tone on its sound card (snd-usb-audio), once directly on
//! the xHCI device (the control: it proves the checks work), once on the same device passed
//! through periwire to the guest's own vhci-hcd (`usbip attach`). The test then checks the
//! recording's length, that it is not silence, and its frequency.

mod common;

use std::path::Path;
use std::time::Duration;

use common::{prefixed_lines, with_host_binaries, with_periwire, STEP};
use common::{GUEST_USB_HELPERS, GUEST_WAIT_HELPERS};
use periwire_guest::{Guest, GuestConfig};

/// QEMU's `usb-audio`, as `VID:PID` in lowercase hex.
const AUDIO_IDS: &str = "46f4:0002";
/// What QEMU's usb-audio takes (stereo, 48 kHz, S16_LE) and the tone played.
const RATE: u32 = 48_000;
const CHANNELS: u16 = 2;
const TONE_HZ: f64 = 1000.0;
/// Seconds of tone played.
const SECONDS: u32 = 3;
/// Bytes of audio per second at that format: 192000.
const BYTES_PER_SECOND: u32 = RATE * CHANNELS as u32 * 2;

/// The recording may differ from what was played by this fraction of its length: a few
/// packets of the stream's start and end are lost or padded by the device's FIFO and by
/// QEMU's mixer, which runs on its own timer.
const LENGTH_TOLERANCE: f64 = 0.10;
/// The recorded tone's frequency may differ from the played one by this fraction.
const FREQUENCY_TOLERANCE: f64 = 0.03;

/// Shell helpers: the sound card of a USB device.
const HELPERS: &str = r#"
# card_at PATTERN: the number of the ALSA card whose sysfs path contains PATTERN and that
# has a playback device.
card_at() {
    for c in /sys/class/sound/card*; do
        [ -e "$c" ] || continue
        n=${c##*/card}
        case "$(readlink -f "$c")" in *"$1"*) [ -c "/dev/snd/pcmC${n}D0p" ] && { echo "$n"; return 0; } ;; esac
    done
    return 1
}
no_card_at() { ! card_at "$1" >/dev/null; }
# play CARD: play /tone.wav on CARD's first PCM device, as it is (hw: no conversion);
# marks PLAYED with the seconds it took.
play() {
    read -r t0 _ </proc/uptime
    aplay -q -D "hw:$1,0" /tone.wav
    read -r t1 _ </proc/uptime
    mark PLAYED card=$1 start=$t0 end=$t1
}
# usbip_ok: whether the server answers a device list.
usbip_ok() { timeout 20 usbip list -r 127.0.0.1 >/tmp/remote 2>&1; }
# find_audio: wait for the xHCI usb-audio and its sound card; sets $dev to its bus id.
find_audio() {
    wait_until 60 "the xHCI usb-audio" usb_device "$AUDIO_IDS"
    dev=$(usb_device "$AUDIO_IDS")
    wait_until 60 "the usb-audio sound card on xHCI" card_at "/$dev:"
}
"#;

/// Direct: the tone on the xHCI device's own card.
fn direct_scenario() -> String {
    format!(
        r#"{GUEST_WAIT_HELPERS}{GUEST_USB_HELPERS}{HELPERS}
        AUDIO_IDS={AUDIO_IDS}
        find_audio
        play "$(card_at "/$dev:")"
        "#
    )
}

/// Passthrough: periwire exports the device by bus id and the guest's vhci-hcd imports it;
/// the tone plays on the card behind vhci.
fn passthrough_scenario() -> String {
    format!(
        r#"{GUEST_WAIT_HELPERS}{GUEST_USB_HELPERS}{HELPERS}
        AUDIO_IDS={AUDIO_IDS}
        find_audio
        mkdir -p /tmp/pw
        printf '[[device]]\nkind = "host"\nbusid = "%s"\n' "$dev" >/tmp/pw/periwire.toml
        periwire serve --config /tmp/pw/periwire.toml --data-dir /tmp/pw \
            --listen 127.0.0.1:3240 -v >/tmp/pw/serve.log 2>&1 &
        server=$!
        wait_until 60 "periwire serve to answer usbip list" usbip_ok
        timeout 60 usbip attach -r 127.0.0.1 -b "$dev"
        wait_until 90 "the sound card behind vhci_hcd" card_at vhci_hcd
        wait_until 60 "the xHCI card to go away" no_card_at "/$dev:"
        mark TAKEN dev=$dev driver=$(driver "$dev:1.1")
        play "$(card_at vhci_hcd)"
        # Detached, the device goes back to snd-usb-audio on xHCI, both interfaces of it
        # (the streaming one from periwire's own usbfs handle).
        port=$(usbip port | awk '$1 == "Port" {{ p = $2 + 0 }} /usbip:\/\// {{ print p }}')
        timeout 60 usbip detach -p "$port"
        wait_until 60 "the vhci card to go away" no_card_at vhci_hcd
        wait_until 90 "snd-usb-audio to bind the xHCI device again" card_at "/$dev:" || {{
            sed 's/^/SERVE /' /tmp/pw/serve.log
            echo "FAILED: drivers $(driver "$dev:1.0") $(driver "$dev:1.1")"
            exit 1
        }}
        mark RETURNED control=$(driver "$dev:1.0") streaming=$(driver "$dev:1.1")
        kill -TERM $server
        wait_until 60 "periwire serve to exit" exited $server
        sed 's/^/SERVE /' /tmp/pw/serve.log
        "#
    )
}

/// `seconds` seconds of a `TONE_HZ` sine at half scale, the same on both channels, as a
/// canonical 44-byte-header WAV file.
fn tone_wav(seconds: u32) -> Vec<u8> {
    let frames = RATE * seconds;
    let data_len = frames * u32::from(CHANNELS) * 2;
    let mut wav = Vec::with_capacity(44 + data_len as usize);
    wav.extend_from_slice(b"RIFF");
    wav.extend_from_slice(&(36 + data_len).to_le_bytes());
    wav.extend_from_slice(b"WAVEfmt ");
    wav.extend_from_slice(&16u32.to_le_bytes());
    wav.extend_from_slice(&1u16.to_le_bytes()); // PCM
    wav.extend_from_slice(&CHANNELS.to_le_bytes());
    wav.extend_from_slice(&RATE.to_le_bytes());
    wav.extend_from_slice(&BYTES_PER_SECOND.to_le_bytes());
    wav.extend_from_slice(&(CHANNELS * 2).to_le_bytes());
    wav.extend_from_slice(&16u16.to_le_bytes());
    wav.extend_from_slice(b"data");
    wav.extend_from_slice(&data_len.to_le_bytes());
    for i in 0..frames {
        let t = f64::from(i) / f64::from(RATE);
        let sample = (16384.0 * (2.0 * std::f64::consts::PI * TONE_HZ * t).sin()) as i16;
        for _ in 0..CHANNELS {
            wav.extend_from_slice(&sample.to_le_bytes());
        }
    }
    wav
}

/// A WAV recording: its rate and channels (from `fmt `) and its samples. The samples run to
/// the end of the file whatever the `data` header says (QEMU fills the sizes in at exit).
struct Recording {
    rate: u32,
    channels: u16,
    samples: Vec<i16>,
}

fn read_wav(path: &Path) -> Recording {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert!(
        bytes.len() >= 12 && &bytes[..4] == b"RIFF" && &bytes[8..12] == b"WAVE",
        "{} is a WAV file ({} bytes)",
        path.display(),
        bytes.len()
    );
    let (mut rate, mut channels, mut bits) = (0, 0, 0);
    let mut at = 12;
    while at + 8 <= bytes.len() {
        let id = &bytes[at..at + 4];
        let len = u32::from_le_bytes(bytes[at + 4..at + 8].try_into().unwrap()) as usize;
        let body = at + 8;
        if id == b"fmt " && body + 16 <= bytes.len() {
            channels = u16::from_le_bytes([bytes[body + 2], bytes[body + 3]]);
            rate = u32::from_le_bytes(bytes[body + 4..body + 8].try_into().unwrap());
            bits = u16::from_le_bytes([bytes[body + 14], bytes[body + 15]]);
        }
        if id == b"data" {
            let samples = bytes[body..]
                .chunks_exact(2)
                .map(|s| i16::from_le_bytes([s[0], s[1]]))
                .collect();
            assert_eq!(bits, 16, "the recording is 16-bit PCM");
            return Recording {
                rate,
                channels,
                samples,
            };
        }
        at = body + len;
    }
    panic!("{}: no data chunk", path.display());
}

impl Recording {
    /// Bytes of audio at the played format (48 kHz stereo S16).
    fn seconds(&self) -> f64 {
        self.samples.len() as f64 / f64::from(self.channels) / f64::from(self.rate)
    }

    /// The first channel.
    fn left(&self) -> impl Iterator<Item = i16> + '_ {
        self.samples
            .iter()
            .step_by(usize::from(self.channels))
            .copied()
    }

    /// Root mean square of the first channel.
    fn rms(&self) -> f64 {
        let (sum, n) = self
            .left()
            .fold((0.0, 0usize), |(s, n), x| (s + f64::from(x).powi(2), n + 1));
        (sum / n.max(1) as f64).sqrt()
    }

    /// The frequency of the first channel from its upward zero crossings (with a little
    /// hysteresis, so that noise around zero does not count), over the span between the
    /// first and the last.
    fn frequency(&self) -> f64 {
        let mut crossings = Vec::new();
        let mut below = false;
        for (i, x) in self.left().enumerate() {
            if x < -1000 {
                below = true;
            } else if below && x >= 0 {
                below = false;
                crossings.push(i);
            }
        }
        let (Some(first), Some(last)) = (crossings.first(), crossings.last()) else {
            return 0.0;
        };
        if last == first {
            return 0.0;
        }
        (crossings.len() - 1) as f64 * f64::from(self.rate) / (last - first) as f64
    }
}

/// The guest: usb-audio on the xHCI, recording to `wav`; aplay and its ALSA configuration,
/// snd-usb-audio, vhci-hcd and periwire; the tone at /tone.wav.
fn audio_guest(scenario: String, wav: &Path) -> GuestConfig {
    let mut config = GuestConfig::new(scenario)
        .modules(["xhci-pci", "vhci-hcd", "snd-usb-audio"])
        .qemu_args([
            "-device".to_owned(),
            "qemu-xhci,id=xhci".to_owned(),
            "-audiodev".to_owned(),
            // The backend at the device's own format, so QEMU's mixer does not resample.
            format!(
                "wav,id=snd0,path={},out.frequency={RATE},out.channels={CHANNELS},out.format=s16",
                wav.display()
            ),
            "-device".to_owned(),
            "usb-audio,audiodev=snd0,bus=xhci.0".to_owned(),
        ])
        .file("/tone.wav", 0o644, tone_wav(SECONDS))
        .timeout(Duration::from_secs(600));
    // libasound reads its configuration (which defines `hw:`) before it opens a device.
    for entry in std::fs::read_dir("/usr/share/alsa/cards")
        .expect(
            "/usr/share/alsa/cards (alsa-utils' libasound2-data; run scripts/install-test-deps)",
        )
        .flatten()
        .map(|e| e.path())
        .chain([Path::new("/usr/share/alsa/alsa.conf").to_path_buf()])
        .filter(|p| p.is_file())
    {
        let bytes = std::fs::read(&entry).expect("ALSA configuration");
        config = config.file(entry.display().to_string(), 0o644, bytes);
    }
    with_periwire(with_host_binaries(config, &["/usr/bin/aplay"]))
}

/// Boots `scenario`, waits for it to play and end, and returns how long aplay ran and the
/// recording QEMU made. A `passthrough` scenario marks TAKEN once the device is imported.
fn play_and_record(scenario: String, label: &str, passthrough: bool) -> (f64, Recording) {
    let dir = tempfile::tempdir().expect("temp dir");
    let wav = dir.path().join("recorded.wav");
    let mut guest = Guest::boot(audio_guest(scenario, &wav)).expect("boot");
    if passthrough {
        // Imported: snd-usb-audio let go of the xHCI device's streaming interface (periwire
        // holds it) and the card plays behind vhci-hcd.
        let taken = guest.expect_line("TAKEN ", STEP * 2);
        let taken = taken.unwrap_or_else(|e| panic!("{label}: {e}"));
        assert!(
            taken.contains("driver=usbfs"),
            "periwire holds the streaming interface through usbfs: {taken}"
        );
    }
    let played = guest.expect_line("PLAYED ", STEP * 2);
    let returned = passthrough.then(|| guest.expect_line("RETURNED ", STEP));
    let outcome = guest.wait_exit(STEP);
    let serve_log = prefixed_lines(guest.transcript(), "SERVE ").join("\n");
    let serve_log = format!("{serve_log}\n--- console ---\n{}", guest.tail(30));
    if passthrough {
        assert!(
            without_colours(&serve_log).contains("isochronous=1"),
            "{label}: periwire holds one interface for its isochronous endpoint:\n{serve_log}"
        );
    }
    let played = played.unwrap_or_else(|e| panic!("{label}: {e}\n{serve_log}"));
    let outcome = outcome.unwrap_or_else(|e| panic!("{label}: {e}\n{serve_log}"));
    if let Some(returned) = returned {
        let returned = returned.unwrap_or_else(|e| panic!("{label}: {e}\n{serve_log}"));
        assert!(
            returned.contains("control=snd-usb-audio streaming=snd-usb-audio"),
            "{label}: detached, the device is snd-usb-audio's again: {returned}"
        );
    }
    assert!(
        outcome.success(),
        "{label}: the scenario succeeds:\n{}\n{serve_log}",
        guest.tail(40)
    );
    let field = |key: &str| -> f64 {
        played
            .split_whitespace()
            .find_map(|w| w.strip_prefix(key))
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("{key} in {played:?}"))
    };
    let playing = field("end=") - field("start=");
    (playing, read_wav(&wav))
}

/// `log` without the terminal colour sequences (`ESC [ ... m`) the server's log has.
fn without_colours(log: &str) -> String {
    let mut out = String::with_capacity(log.len());
    let mut chars = log.chars();
    while let Some(c) = chars.next() {
        if c == '\x1b' {
            chars.by_ref().find(|&c| c == 'm');
        } else {
            out.push(c);
        }
    }
    out
}

/// What was recorded is the tone that was played: as long (within [`LENGTH_TOLERANCE`]), not
/// silence, at 1 kHz (within [`FREQUENCY_TOLERANCE`]). Prints the delivered rate.
fn check_recording(label: &str, playing: f64, recording: &Recording) {
    let seconds = recording.seconds();
    let rms = recording.rms();
    let frequency = recording.frequency();
    let delivered = seconds * f64::from(BYTES_PER_SECOND) / playing;
    eprintln!(
        "{label}: recorded {seconds:.3} s of {SECONDS} s played (aplay ran {playing:.2} s: \
         {delivered:.0} B/s delivered of {BYTES_PER_SECOND} nominal), rms {rms:.0}, \
         {frequency:.1} Hz"
    );
    assert_eq!(
        (recording.rate, recording.channels),
        (RATE, CHANNELS),
        "{label}: QEMU records at the device's format"
    );
    let expected = f64::from(SECONDS);
    assert!(
        (seconds - expected).abs() <= expected * LENGTH_TOLERANCE,
        "{label}: the recording is as long as the tone played: {seconds:.3} s, not {expected} s"
    );
    // A half-scale sine has an rms of 16384/sqrt(2), about 11585.
    assert!(
        rms > 8000.0,
        "{label}: the recording is the tone, not silence or noise: rms {rms:.0}"
    );
    assert!(
        (frequency - TONE_HZ).abs() <= TONE_HZ * FREQUENCY_TOLERANCE,
        "{label}: the recorded tone is at {TONE_HZ} Hz: {frequency:.1} Hz"
    );
}

#[test]
fn a_tone_played_on_the_xhci_usb_audio_reaches_qemu() {
    let (playing, recording) = play_and_record(direct_scenario(), "direct", false);
    check_recording("direct", playing, &recording);
}

#[test]
fn a_tone_played_through_periwire_passthrough_reaches_qemus_usb_audio() {
    let (playing, recording) = play_and_record(passthrough_scenario(), "through periwire", true);
    check_recording("through periwire", playing, &recording);
}

#[test]
fn the_tone_file_holds_the_tone_the_checks_look_for() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("tone.wav");
    std::fs::write(&path, tone_wav(1)).expect("write");
    let tone = read_wav(&path);
    assert!((tone.seconds() - 1.0).abs() < 1e-9);
    assert!(
        (tone.frequency() - TONE_HZ).abs() < 1.0,
        "{}",
        tone.frequency()
    );
    assert!(tone.rms() > 11000.0, "{}", tone.rms());
}
