//! Reading buffers back from the GPU, natively and in the browser with one code path.
//!
//! `map_async`'s callback fires when the device is polled (native) or when control returns to
//! the JavaScript event loop (WebGPU, where `device.poll` does nothing and blocking is
//! impossible). [`map_read`] turns the callback into a future: natively it polls the device
//! first, so the future is ready by the time it is awaited and any executor (`pollster`) drives
//! it; in the browser it simply awaits, yielding to the event loop until the mapping is done.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};

use crate::device::Gpu;
use crate::error::{Error, Result};

/// The state a [`Sender`] and its [`Receiver`] share.
struct Slot<T> {
    value: Option<T>,
    /// The sender was dropped without sending.
    closed: bool,
    waker: Option<Waker>,
}

/// Completes its [`Receiver`] once.
struct Sender<T>(Arc<Mutex<Slot<T>>>);

/// A future of the value its [`Sender`] sends; `None` when the sender is dropped unsent.
struct Receiver<T>(Arc<Mutex<Slot<T>>>);

fn lock<T>(m: &Mutex<Slot<T>>) -> std::sync::MutexGuard<'_, Slot<T>> {
    match m.lock() {
        Ok(g) => g,
        Err(p) => p.into_inner(),
    }
}

/// A one-shot channel: the map callback sends, the reader awaits.
fn oneshot<T>() -> (Sender<T>, Receiver<T>) {
    let slot = Arc::new(Mutex::new(Slot {
        value: None,
        closed: false,
        waker: None,
    }));
    (Sender(slot.clone()), Receiver(slot))
}

impl<T> Sender<T> {
    fn send(self, value: T) {
        let waker = {
            let mut s = lock(&self.0);
            s.value = Some(value);
            s.waker.take()
        };
        if let Some(w) = waker {
            w.wake();
        }
        // Drop sees the value and does not close.
    }
}

impl<T> Drop for Sender<T> {
    fn drop(&mut self) {
        let waker = {
            let mut s = lock(&self.0);
            if s.value.is_some() {
                return;
            }
            s.closed = true;
            s.waker.take()
        };
        if let Some(w) = waker {
            w.wake();
        }
    }
}

impl<T> Receiver<T> {
    /// Whether awaiting would complete at once.
    #[cfg(not(target_arch = "wasm32"))]
    fn is_done(&self) -> bool {
        let s = lock(&self.0);
        s.value.is_some() || s.closed
    }
}

impl<T> Future for Receiver<T> {
    type Output = Option<T>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<T>> {
        let mut s = lock(&self.0);
        if let Some(v) = s.value.take() {
            return Poll::Ready(Some(v));
        }
        if s.closed {
            return Poll::Ready(None);
        }
        s.waker = Some(cx.waker().clone());
        Poll::Pending
    }
}

/// Maps `buf` for reading and copies out its first `bytes` bytes, then unmaps it.
///
/// `after` is the submission that last wrote `buf`: natively the device is polled until that
/// submission (or, with `None`, all submitted work) is done before the mapping is awaited. In
/// the browser the mapping is awaited directly. Errors wgpu reported meanwhile (validation, out
/// of memory, a lost device) come back as this crate's errors.
pub async fn map_read(
    gpu: &Gpu,
    buf: &wgpu::Buffer,
    bytes: u64,
    after: Option<wgpu::SubmissionIndex>,
) -> Result<Vec<u8>> {
    let span = bytes.next_multiple_of(4).max(4);
    if span > buf.size() {
        return Err(Error::Readback(format!(
            "{bytes} bytes asked of a {}-byte buffer",
            buf.size()
        )));
    }
    let slice = buf.slice(..span);
    let (tx, rx) = oneshot();
    slice.map_async(wgpu::MapMode::Read, move |r| tx.send(r));
    #[cfg(not(target_arch = "wasm32"))]
    {
        let poll = |submission_index| {
            gpu.device
                .poll(wgpu::PollType::Wait {
                    submission_index,
                    timeout: None,
                })
                .map_err(|e| Error::DeviceLost(e.to_string()))
        };
        poll(after)?;
        // The mapping may wait on a later submission than `after` (then: wait for everything),
        // and when several threads share the device, another thread's poll can be the one that
        // runs this callback, a moment after our own poll returned (seen on lavapipe with the
        // tests in parallel): poll again for up to a second before calling it lost.
        let mut tries = 0;
        while !rx.is_done() && tries < 1000 {
            poll(None)?;
            if !rx.is_done() {
                std::thread::sleep(std::time::Duration::from_millis(1));
            }
            tries += 1;
        }
        if !rx.is_done() {
            gpu.take_error()?;
            return Err(Error::Readback(
                "the buffer was not mapped after the device went idle".into(),
            ));
        }
    }
    #[cfg(target_arch = "wasm32")]
    let _ = after; // the browser orders the mapping after the buffer's last submission itself
    let mapped = rx.await;
    let data = match mapped {
        Some(Ok(())) => {
            let data = slice
                .get_mapped_range()
                .map_err(|e| Error::Readback(e.to_string()))
                .map(|view| view[..bytes as usize].to_vec());
            // unmapped whatever happened, so the buffer can be mapped again
            buf.unmap();
            data
        }
        Some(Err(e)) => Err(Error::Readback(e.to_string())),
        None => Err(Error::Readback("the map callback was dropped".into())),
    };
    // a device error since the last check makes the data suspect: it wins
    gpu.take_error()?;
    data
}
