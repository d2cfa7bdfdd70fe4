//! A socket's bounded queue of frames to send, and its pending close.
//!
//! The subscription reader pushes frames and other tasks request closes; the socket's session
//! takes them. It allocates nothing while idle (unlike a channel), which keeps an idle
//! connection small. A full queue means the agent reads too slowly: the socket is then closed
//! with [`Close::SlowConsumer`] instead of buffering without bound.

use axum::extract::ws::Utf8Bytes;
use flotilla_shared::close_codes::Close;
use std::collections::VecDeque;
use std::sync::Mutex;
use std::task::{Context, Poll, Waker};

/// What the session should do next.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Next {
    /// Send this frame.
    Frame(Utf8Bytes),
    /// Close the socket so.
    Close(Close),
}

/// What became of a pushed frame.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Pushed {
    /// Queued for sending.
    Queued,
    /// The queue was full; the socket is being closed as too slow.
    Overflow,
    /// The socket is already closing; the frame was dropped.
    Closing,
}

/// A socket's outbound queue; shared between its session and the tasks that feed it.
#[derive(Debug)]
pub(crate) struct Outbox {
    capacity: usize,
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    frames: VecDeque<Utf8Bytes>,
    close: Option<Close>,
    waker: Option<Waker>,
}

impl State {
    fn wake(&mut self) {
        if let Some(w) = self.waker.take() {
            w.wake();
        }
    }
}

impl Outbox {
    /// An empty queue holding at most `capacity` frames.
    pub(crate) fn new(capacity: usize) -> Self {
        Self {
            capacity,
            state: Mutex::default(),
        }
    }

    /// Queues a frame; overflowing the queue requests a [`Close::SlowConsumer`].
    pub(crate) fn push(&self, frame: Utf8Bytes) -> Pushed {
        let mut state = self.state.lock().unwrap();
        if state.close.is_some() {
            return Pushed::Closing;
        }
        let pushed = if state.frames.len() >= self.capacity {
            state.close = Some(Close::SlowConsumer);
            Pushed::Overflow
        } else {
            state.frames.push_back(frame);
            Pushed::Queued
        };
        state.wake();
        pushed
    }

    /// Requests a close; the first request wins.
    pub(crate) fn close(&self, close: Close) {
        let mut state = self.state.lock().unwrap();
        if state.close.is_none() {
            state.close = Some(close);
            state.wake();
        }
    }

    /// The close, else a frame when `want_frame`, else registers the task to be woken.
    pub(crate) fn poll_next(&self, cx: &mut Context<'_>, want_frame: bool) -> Poll<Next> {
        let mut state = self.state.lock().unwrap();
        if let Some(close) = state.close {
            return Poll::Ready(Next::Close(close));
        }
        if want_frame {
            if let Some(frame) = state.frames.pop_front() {
                if state.frames.is_empty() {
                    // Give the memory back: most sockets sit idle between rare pushes.
                    state.frames = VecDeque::new();
                }
                return Poll::Ready(Next::Frame(frame));
            }
        }
        match &mut state.waker {
            Some(w) if w.will_wake(cx.waker()) => {}
            slot => *slot = Some(cx.waker().clone()),
        }
        Poll::Pending
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::task::Wake;

    struct Flag(std::sync::atomic::AtomicBool);
    impl Wake for Flag {
        fn wake(self: Arc<Self>) {
            self.0.store(true, std::sync::atomic::Ordering::SeqCst);
        }
    }

    fn waker() -> (Arc<Flag>, Waker) {
        let flag = Arc::new(Flag(false.into()));
        (flag.clone(), Waker::from(flag))
    }

    #[test]
    fn frames_come_out_in_order_and_wake_the_session() {
        let outbox = Outbox::new(4);
        let (flag, w) = waker();
        let mut cx = Context::from_waker(&w);
        assert!(outbox.poll_next(&mut cx, true).is_pending());
        assert_eq!(outbox.push("a".into()), Pushed::Queued);
        assert!(flag.0.load(std::sync::atomic::Ordering::SeqCst));
        outbox.push("b".into());
        assert_eq!(
            outbox.poll_next(&mut cx, true),
            Poll::Ready(Next::Frame("a".into()))
        );
        // A session that cannot write yet is not handed frames.
        assert!(outbox.poll_next(&mut cx, false).is_pending());
        assert_eq!(
            outbox.poll_next(&mut cx, true),
            Poll::Ready(Next::Frame("b".into()))
        );
    }

    #[test]
    fn overflow_closes_as_slow_consumer_and_close_wins_over_frames() {
        let outbox = Outbox::new(2);
        outbox.push("a".into());
        outbox.push("b".into());
        assert_eq!(outbox.push("c".into()), Pushed::Overflow);
        assert_eq!(outbox.push("d".into()), Pushed::Closing);
        let (_, w) = waker();
        let mut cx = Context::from_waker(&w);
        assert_eq!(
            outbox.poll_next(&mut cx, true),
            Poll::Ready(Next::Close(Close::SlowConsumer))
        );
        outbox.close(Close::Revoked);
        assert_eq!(
            outbox.poll_next(&mut cx, false),
            Poll::Ready(Next::Close(Close::SlowConsumer))
        );
    }
}
