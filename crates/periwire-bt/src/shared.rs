//! The process-wide radio and per-adapter handles.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Instant;

use periwire_hci::controller::{LinkInfo, ToHost};
use periwire_hci::radio::RadioError;
use periwire_hci::{AdapterId, ControllerConfig, Radio};
use tokio::sync::Notify;

use crate::AdapterHandle;

struct State {
    radio: Radio,
    wakers: HashMap<AdapterId, Arc<Notify>>,
}

struct Inner {
    state: Mutex<State>,
    /// Wakes the timer task when a deadline may have moved earlier.
    timer: Arc<Notify>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.timer.notify_one();
    }
}

/// The simulated radio every adapter of the process shares. Cheap to clone.
#[derive(Clone)]
pub struct SharedRadio {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for SharedRadio {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedRadio").finish_non_exhaustive()
    }
}

impl SharedRadio {
    /// A new, empty radio. Must be called inside a tokio runtime: it spawns the timer task,
    /// which ends when the last clone of the radio is dropped.
    pub fn new() -> Self {
        let inner = Arc::new(Inner {
            state: Mutex::new(State {
                radio: Radio::new(),
                wakers: HashMap::new(),
            }),
            timer: Arc::new(Notify::new()),
        });
        tokio::spawn(timer_task(Arc::downgrade(&inner), inner.timer.clone()));
        Self { inner }
    }

    /// Attaches a new controller with `config` and returns its handle.
    pub fn attach(&self, config: ControllerConfig) -> AdapterHandle {
        AdapterHandle::from(self.attach_radio(config))
    }

    pub(crate) fn attach_radio(&self, config: ControllerConfig) -> RadioAdapter {
        let notify = Arc::new(Notify::new());
        let id = {
            let mut st = self.lock();
            let id = st.radio.add_adapter(config);
            st.wakers.insert(id, notify.clone());
            id
        };
        tracing::info!(adapter = %id, "Bluetooth adapter attached");
        RadioAdapter {
            radio: self.clone(),
            id,
            notify,
        }
    }

    /// Every adapter with its address, local name and links (for status listings).
    pub fn adapters(&self) -> Vec<(AdapterId, periwire_hci::BdAddr, String, Vec<LinkInfo>)> {
        let st = self.lock();
        st.radio
            .adapter_ids()
            .filter_map(|id| {
                let c = st.radio.adapter(id)?;
                Some((id, c.bd_addr(), c.local_name(), c.links()))
            })
            .collect()
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock would be a bug in the state machine; keep serving
        // the other adapters with the state as it is rather than poisoning everything.
        self.inner
            .state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Runs `f` on the radio, then wakes the adapters that got packets and the timer task.
    fn with<T>(&self, f: impl FnOnce(&mut Radio) -> T) -> T {
        let mut st = self.lock();
        let out = f(&mut st.radio);
        wake(&mut st);
        drop(st);
        self.inner.timer.notify_one();
        out
    }
}

impl Default for SharedRadio {
    fn default() -> Self {
        Self::new()
    }
}

fn wake(st: &mut State) {
    for id in st.radio.take_ready() {
        if let Some(n) = st.wakers.get(&id) {
            n.notify_one();
        }
    }
}

async fn timer_task(inner: Weak<Inner>, timer: Arc<Notify>) {
    loop {
        // Only a weak reference is held while sleeping, so dropping the radio ends the task
        // (Inner's Drop wakes it).
        let deadline = {
            let Some(strong) = inner.upgrade() else {
                return;
            };
            let st = strong.state.lock().unwrap_or_else(|p| p.into_inner());
            st.radio.poll_timeout()
        };
        let sleep = async {
            match deadline {
                Some(t) => tokio::time::sleep_until(tokio::time::Instant::from_std(t)).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            () = sleep => {
                let Some(strong) = inner.upgrade() else {
                    return;
                };
                let mut st = strong.state.lock().unwrap_or_else(|p| p.into_inner());
                st.radio.handle_timeout(Instant::now());
                wake(&mut st);
            }
            () = timer.notified() => {}
        }
    }
}

/// One controller attached to the shared radio. Dropping it detaches the adapter: its peers
/// see their links to it drop (Connection Timeout).
pub(crate) struct RadioAdapter {
    radio: SharedRadio,
    id: AdapterId,
    notify: Arc<Notify>,
}

impl std::fmt::Debug for RadioAdapter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RadioAdapter")
            .field("id", &self.id)
            .finish()
    }
}

impl RadioAdapter {
    /// The adapter's id on the radio.
    pub fn id(&self) -> AdapterId {
        self.id
    }

    /// Hands an HCI command packet (no transport framing) to the controller.
    pub fn send_command(&self, packet: &[u8]) -> Result<(), RadioError> {
        let id = self.id;
        self.radio
            .with(|r| r.handle_command(id, Instant::now(), packet))
    }

    /// Hands an HCI ACL data packet (no transport framing) to the controller.
    pub fn send_acl(&self, packet: &[u8]) -> Result<(), RadioError> {
        let id = self.id;
        self.radio
            .with(|r| r.handle_acl(id, Instant::now(), packet))
    }

    /// The next packet for the host, if one is queued.
    pub fn try_recv(&self) -> Option<ToHost> {
        let id = self.id;
        self.radio.with(|r| r.poll_to_host(id, Instant::now()))
    }

    /// Waits for the next packet for the host. Cancel-safe: a packet is only taken from the
    /// controller when this returns.
    pub async fn recv(&self) -> ToHost {
        loop {
            if let Some(p) = self.try_recv() {
                return p;
            }
            self.notify.notified().await;
        }
    }
}

impl Drop for RadioAdapter {
    fn drop(&mut self) {
        let id = self.id;
        self.radio.with(|r| {
            r.remove_adapter(id, Instant::now());
        });
        self.radio.lock().wakers.remove(&id);
        tracing::info!(adapter = %id, "Bluetooth adapter detached");
    }
}
