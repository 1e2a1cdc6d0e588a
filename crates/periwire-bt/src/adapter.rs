//! One emulated controller, whichever medium it is attached to: what every transport (H4, a
//! USB dongle, `/dev/vhci`) drives.

use periwire_hci::controller::ToHost;
use periwire_hci::radio::RadioError;
use periwire_hci::{AdapterId, ControllerConfig};

use crate::host::{HostAdapterHandle, HostMedium};
use crate::shared::RadioAdapter;
use crate::SharedRadio;

/// Where a controller's link manager reaches remote devices.
#[derive(Debug, Clone)]
pub enum Medium {
    /// The simulated radio, shared by every simulated adapter of the process.
    Simulated(SharedRadio),
    /// The host's own Bluetooth stack: remote devices are real, each channel a host socket.
    Host(HostMedium),
}

impl Medium {
    /// Attaches a controller with `config`. Must be called inside a tokio runtime.
    pub fn attach(&self, config: ControllerConfig) -> AdapterHandle {
        match self {
            Medium::Simulated(radio) => radio.attach(config),
            Medium::Host(host) => host.attach(config).into(),
        }
    }

    /// `simulated`, or `host:hciN`: what status listings call the medium.
    pub fn describe(&self) -> String {
        match self {
            Medium::Simulated(_) => "simulated".to_owned(),
            Medium::Host(h) => format!("host:hci{}", h.host().index),
        }
    }
}

/// One attached controller; packet-typed, so H4, a USB dongle or `/dev/vhci` can drive it.
/// Dropping it detaches the controller: its links drop, and on the host link its sockets close.
#[derive(Debug)]
pub struct AdapterHandle {
    backend: Backend,
}

#[derive(Debug)]
enum Backend {
    Radio(RadioAdapter),
    Host(HostAdapterHandle),
}

impl From<RadioAdapter> for AdapterHandle {
    fn from(a: RadioAdapter) -> Self {
        Self {
            backend: Backend::Radio(a),
        }
    }
}

impl From<HostAdapterHandle> for AdapterHandle {
    fn from(a: HostAdapterHandle) -> Self {
        Self {
            backend: Backend::Host(a),
        }
    }
}

impl AdapterHandle {
    /// The adapter's id.
    pub fn id(&self) -> AdapterId {
        match &self.backend {
            Backend::Radio(a) => a.id(),
            Backend::Host(a) => a.id(),
        }
    }

    /// Hands an HCI command packet (no transport framing) to the controller.
    pub fn send_command(&self, packet: &[u8]) -> Result<(), RadioError> {
        match &self.backend {
            Backend::Radio(a) => a.send_command(packet),
            Backend::Host(a) => a.send_command(packet),
        }
    }

    /// Hands an HCI ACL data packet (no transport framing) to the controller.
    pub fn send_acl(&self, packet: &[u8]) -> Result<(), RadioError> {
        match &self.backend {
            Backend::Radio(a) => a.send_acl(packet),
            Backend::Host(a) => a.send_acl(packet),
        }
    }

    /// The next packet for the host, if one is queued.
    pub fn try_recv(&self) -> Option<ToHost> {
        match &self.backend {
            Backend::Radio(a) => a.try_recv(),
            Backend::Host(a) => a.try_recv(),
        }
    }

    /// Waits for the next packet for the host. Cancel-safe: a packet is only taken from the
    /// controller when this returns.
    pub async fn recv(&self) -> ToHost {
        match &self.backend {
            Backend::Radio(a) => a.recv().await,
            Backend::Host(a) => a.recv().await,
        }
    }
}
