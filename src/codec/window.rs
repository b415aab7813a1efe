//! HTTP/2 flow control (RFC 9113 §5.2, §6.9): a window's arithmetic, and when the
//! receiving side gives credit back.

use super::frame::MAX_WINDOW;

/// A window overflowed 2^31-1 (a WINDOW_UPDATE or a new SETTINGS_INITIAL_WINDOW_SIZE too
/// large): FLOW_CONTROL_ERROR, on the stream or the connection the window is of.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("a flow-control window above 2^31-1")]
pub struct Overflow;

/// One flow-control window: what may still be sent on a stream or a connection. It may
/// go below zero when the peer lowers SETTINGS_INITIAL_WINDOW_SIZE (§6.9.2), and then
/// nothing may be sent until WINDOW_UPDATEs bring it back above.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window(i64);

impl Window {
    pub fn new(size: u32) -> Window {
        Window(size as i64)
    }

    /// What may be sent now.
    pub fn available(&self) -> u32 {
        self.0.clamp(0, MAX_WINDOW as i64) as u32
    }

    /// `n` bytes were sent (at most `available()`) or received; `false`, and nothing
    /// taken, when that is more than the window allows.
    pub fn take(&mut self, n: u32) -> bool {
        if n as i64 > self.0 {
            return false;
        }
        self.0 -= n as i64;
        true
    }

    /// A WINDOW_UPDATE's increment.
    pub fn grow(&mut self, increment: u32) -> Result<(), Overflow> {
        self.adjust(increment as i64)
    }

    /// SETTINGS_INITIAL_WINDOW_SIZE moved by `delta`: every stream window moves by it.
    pub fn adjust(&mut self, delta: i64) -> Result<(), Overflow> {
        let next = self.0 + delta;
        if next > MAX_WINDOW as i64 {
            return Err(Overflow);
        }
        self.0 = next;
        Ok(())
    }
}

/// The receiving side of a window: data taken from it counts as held until the reader
/// releases it; credit goes back to the peer in WINDOW_UPDATEs of at least half the
/// window, so a steady stream costs one update per half window, not one per DATA frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Receive {
    window: Window,
    /// The window this side advertises.
    size: u32,
    /// Released, not yet given back.
    released: u32,
}

impl Receive {
    pub fn new(size: u32) -> Receive {
        Receive {
            window: Window::new(size),
            size,
            released: 0,
        }
    }

    /// `n` bytes of DATA (padding included) arrived; `false` when the peer sent more than
    /// its window allowed (FLOW_CONTROL_ERROR).
    pub fn received(&mut self, n: u32) -> bool {
        self.window.take(n)
    }

    /// The reader is done with `n` bytes: the increment to send now, if any.
    pub fn release(&mut self, n: u32) -> Option<u32> {
        self.released += n;
        if self.released < self.size / 2 {
            return None;
        }
        let increment = std::mem::take(&mut self.released);
        // Cannot overflow: what is given back was taken first.
        self.window
            .grow(increment)
            .expect("within the advertised window");
        Some(increment)
    }

    /// What the peer may still send.
    pub fn available(&self) -> u32 {
        self.window.available()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_take_grow_and_may_go_negative_on_a_settings_change() {
        let mut w = Window::new(65_535);
        assert!(w.take(65_535));
        assert!(!w.take(1), "nothing beyond the window");
        assert_eq!(w.available(), 0);
        w.grow(10).unwrap();
        assert_eq!(w.available(), 10);
        // The peer lowers SETTINGS_INITIAL_WINDOW_SIZE by 100: below zero, nothing sendable.
        w.adjust(-100).unwrap();
        assert_eq!(w.available(), 0);
        assert!(!w.take(1));
        w.grow(95).unwrap();
        assert_eq!(w.available(), 5);
        assert_eq!(Window::new(MAX_WINDOW).grow(1), Err(Overflow));
        let mut w = Window::new(MAX_WINDOW - 1);
        assert_eq!(w.grow(1), Ok(()));
        assert_eq!(w.adjust(1), Err(Overflow));
        assert_eq!(w.available(), MAX_WINDOW, "an overflow changes nothing");
    }

    #[test]
    fn credit_goes_back_in_half_windows() {
        let mut r = Receive::new(1000);
        assert!(r.received(400));
        assert_eq!(r.release(400), None);
        assert!(r.received(600));
        assert!(!r.received(1), "the peer overran the window");
        assert_eq!(r.available(), 0);
        assert_eq!(r.release(100), Some(500));
        assert_eq!(r.available(), 500);
        assert_eq!(r.release(499), None);
        assert_eq!(r.release(1), Some(500));
        assert_eq!(r.available(), 1000);
    }
}
