//! A bounded byte pipe with async waiting on both ends: the buffer between a bulk endpoint
//! and the host side of the serial link. A `std` mutex guards the bytes; a [`Notify`] wakes
//! whoever waits for room or data. Every wait registers for the wake-up before it looks, and
//! every change happens in the poll that completes the future, so the futures are
//! cancel-safe: dropping one changes nothing.

use std::collections::VecDeque;
use std::pin::pin;
use std::sync::{Mutex, MutexGuard};

use tokio::sync::Notify;

/// The other end is gone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Closed;

#[derive(Debug, Default)]
struct State {
    buf: VecDeque<u8>,
    /// No one will read: writes fail at once, the buffer is discarded.
    reader_closed: bool,
    /// No one will write: reads end once the buffer is empty.
    writer_closed: bool,
}

/// A bounded byte pipe.
#[derive(Debug)]
pub(crate) struct Pipe {
    state: Mutex<State>,
    changed: Notify,
    capacity: usize,
}

impl Pipe {
    /// A pipe that holds up to `capacity` bytes (at least 1).
    pub(crate) fn new(capacity: usize) -> Self {
        Self {
            state: Mutex::new(State::default()),
            changed: Notify::new(),
            capacity: capacity.max(1),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Waits until `step` returns `Some`, then wakes the other side.
    async fn wait<T>(&self, mut step: impl FnMut(&mut State) -> Option<T>) -> T {
        loop {
            let mut notified = pin!(self.changed.notified());
            notified.as_mut().enable();
            let done = step(&mut self.lock());
            if let Some(v) = done {
                self.changed.notify_waiters();
                return v;
            }
            notified.await;
        }
    }

    /// Waits until all of `data` fits, then queues it in one go: a bulk OUT URB is taken
    /// whole or not at all, so an unlinked URB leaves nothing behind. A URB larger than the
    /// whole pipe goes in once the pipe is empty (memory stays bounded by the capacity plus
    /// the server's URB size cap). Cancel-safe.
    pub(crate) async fn push_whole(&self, data: &[u8]) -> Result<(), Closed> {
        self.wait(|s| {
            if s.reader_closed {
                Some(Err(Closed))
            } else if s.buf.is_empty() || s.buf.len() + data.len() <= self.capacity {
                s.buf.extend(data);
                Some(Ok(()))
            } else {
                None
            }
        })
        .await
    }

    /// Queues `data` piece by piece as room frees up; returns once all of it is queued.
    /// Dropping the future may leave a prefix of `data` queued.
    pub(crate) async fn push_stream(&self, mut data: &[u8]) -> Result<(), Closed> {
        while !data.is_empty() {
            let n = self
                .wait(|s| {
                    if s.reader_closed {
                        return Some(Err(Closed));
                    }
                    let room = self.capacity.saturating_sub(s.buf.len()).min(data.len());
                    if room == 0 {
                        return None;
                    }
                    s.buf.extend(&data[..room]);
                    Some(Ok(room))
                })
                .await?;
            data = &data[n..];
        }
        if self.lock().reader_closed {
            return Err(Closed);
        }
        Ok(())
    }

    /// Waits for data and takes up to `max` bytes (at least one); `None` once the pipe is
    /// empty and the writer is gone. Cancel-safe.
    pub(crate) async fn pop(&self, max: usize) -> Option<Vec<u8>> {
        let max = max.max(1);
        self.wait(|s| {
            if s.buf.is_empty() {
                return s.writer_closed.then_some(None);
            }
            let n = s.buf.len().min(max);
            Some(Some(s.buf.drain(..n).collect()))
        })
        .await
    }

    /// Bytes queued.
    pub(crate) fn len(&self) -> usize {
        self.lock().buf.len()
    }

    /// The reader is gone: queued bytes are discarded and writers fail from now on.
    pub(crate) fn close_reader(&self) {
        {
            let mut s = self.lock();
            s.reader_closed = true;
            s.buf = VecDeque::new();
        }
        self.changed.notify_waiters();
    }

    /// The writer is gone: readers get what is queued, then `None`.
    pub(crate) fn close_writer(&self) {
        self.lock().writer_closed = true;
        self.changed.notify_waiters();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hid::test_util::poll_once;

    #[tokio::test]
    async fn whole_pushes_wait_for_room() {
        let p = Pipe::new(8);
        p.push_whole(b"hello").await.unwrap();
        let mut push = Box::pin(p.push_whole(b"world"));
        assert!(poll_once(&mut push).await.is_none(), "5 + 5 > 8: waits");
        assert_eq!(p.pop(2).await.unwrap(), b"he");
        push.await.unwrap();
        assert_eq!(p.pop(100).await.unwrap(), b"lloworld");
        // Larger than the pipe: goes in when empty.
        p.push_whole(&[7; 20]).await.unwrap();
        assert_eq!(p.len(), 20);
    }

    #[tokio::test]
    async fn dropped_futures_change_nothing() {
        let p = Pipe::new(4);
        p.push_whole(b"abcd").await.unwrap();
        let mut push = Box::pin(p.push_whole(b"ef"));
        assert!(poll_once(&mut push).await.is_none());
        drop(push);
        assert_eq!(p.len(), 4);
        let q = Pipe::new(4);
        let mut pop = Box::pin(q.pop(10));
        assert!(poll_once(&mut pop).await.is_none());
        q.push_whole(b"x").await.unwrap();
        drop(pop);
        assert_eq!(q.pop(10).await.unwrap(), b"x");
    }

    #[tokio::test]
    async fn stream_push_fills_as_room_frees() {
        let p = Pipe::new(3);
        let mut push = Box::pin(p.push_stream(b"abcdefg"));
        assert!(poll_once(&mut push).await.is_none());
        assert_eq!(p.pop(10).await.unwrap(), b"abc");
        assert!(poll_once(&mut push).await.is_none());
        assert_eq!(p.pop(10).await.unwrap(), b"def");
        push.await.unwrap();
        assert_eq!(p.pop(10).await.unwrap(), b"g");
    }

    #[tokio::test]
    async fn closing_ends_the_waits() {
        let p = Pipe::new(2);
        p.push_whole(b"ab").await.unwrap();
        let mut push = Box::pin(p.push_stream(b"cd"));
        assert!(poll_once(&mut push).await.is_none());
        p.close_reader();
        assert_eq!(push.await, Err(Closed));
        assert_eq!(p.len(), 0);
        assert_eq!(p.push_whole(b"x").await, Err(Closed));

        let q = Pipe::new(2);
        q.push_whole(b"z").await.unwrap();
        q.close_writer();
        assert_eq!(q.pop(5).await, Some(b"z".to_vec()));
        assert_eq!(q.pop(5).await, None);
    }
}
