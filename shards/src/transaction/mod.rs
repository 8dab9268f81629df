//! The RFC 3261 §17 transaction layer with the RFC 6026 `Accepted` states:
//! one state enum and one pure transition function per figure (client
//! INVITE, figure 5; client non-INVITE, figure 6; server INVITE, figure 7;
//! server non-INVITE, figure 8). No I/O, no clock: a transition takes an
//! event and returns [`Actions`] (send, pass to the transaction user, arm or
//! cancel a timer, terminate) that the shard carries out.
//!
//! Timers are data ([`TxnTimer`]); the shard keeps them in its wheel and feeds
//! them back as events. Reliable transports (TCP, TLS, SCTP) skip the
//! retransmission timers and zero the wait timers, as §17 prescribes.

mod client_invite;
mod client_non_invite;
pub mod matching;
mod server_invite;
mod server_non_invite;

use core::time::Duration;

use serde::{Deserialize, Serialize};

pub use client_invite::{ClientInvite, ClientInviteState};
pub use client_non_invite::{ClientNonInvite, ClientNonInviteState};
pub use server_invite::{ServerInvite, ServerInviteState};
pub use server_non_invite::{ServerNonInvite, ServerNonInviteState};

/// T1, T2 and T4 of RFC 3261 §17.1.1.1 (table 4); every other timer derives from them.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TimerConfig {
    /// RTT estimate (default 500 ms).
    pub t1: Duration,
    /// Maximum retransmit interval for non-INVITE requests and INVITE responses (default 4 s).
    pub t2: Duration,
    /// Maximum duration a message remains in the network (default 5 s).
    pub t4: Duration,
}

impl Default for TimerConfig {
    fn default() -> Self {
        TimerConfig { t1: Duration::from_millis(500), t2: Duration::from_secs(4), t4: Duration::from_secs(5) }
    }
}

impl TimerConfig {
    /// 64·T1: timers B, F, H, J (unreliable), L and M.
    pub fn t1_x64(&self) -> Duration {
        self.t1 * 64
    }
}

/// The transaction timers of RFC 3261 table 4, with RFC 6026's L and M.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum TxnTimer {
    /// INVITE request retransmit (client, unreliable).
    A,
    /// INVITE transaction timeout (client).
    B,
    /// Wait time for response retransmits (client INVITE, Completed).
    D,
    /// Non-INVITE request retransmit (client, unreliable).
    E,
    /// Non-INVITE transaction timeout (client).
    F,
    /// INVITE response retransmit (server, unreliable).
    G,
    /// Wait time for ACK receipt (server INVITE).
    H,
    /// Wait time for ACK retransmits (server INVITE, Confirmed).
    I,
    /// Wait time for non-INVITE request retransmits (server).
    J,
    /// Wait time for response retransmits (client non-INVITE).
    K,
    /// Wait time for accepted INVITE request retransmits (server, RFC 6026).
    L,
    /// Wait time for retransmission of 2xx INVITE responses (client, RFC 6026).
    M,
}

/// What a transition asks the shard to do.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Transmit (or retransmit) the client transaction's request.
    SendRequest,
    /// Send an ACK for the non-2xx final response just received (§17.1.1.3).
    SendAck,
    /// Transmit (or retransmit) the latest response of the server transaction.
    SendResponse,
    /// Pass the message that caused the event to the transaction user.
    PassToTu,
    /// Tell the transaction user the transaction timed out (timer B, F or H).
    Timeout(TxnTimer),
    /// Tell the transaction user the transport failed (§17.1.4, §17.2.4).
    TransportError,
    /// Arm a timer to fire after the duration.
    Arm(TxnTimer, Duration),
    /// Cancel a timer.
    Cancel(TxnTimer),
    /// The transaction is over: forget it.
    Terminated,
}

/// Most actions one transition produces.
const MAX_ACTIONS: usize = 6;

/// The actions of one transition, in order; no allocation. Each is kept in 8 bytes (an
/// [`Action`] takes 24, a `Duration` 16 of them): a transition's result is moved and walked
/// for every message, and a smaller one is cheaper to move. A timer's duration is kept in
/// whole milliseconds, the wheel's resolution.
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub struct Actions {
    items: [PackedAction; MAX_ACTIONS],
    len: u8,
}

/// An [`Action`] as [`Actions`] keeps it: what to do, the timer it names, the milliseconds of an `Arm`.
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
struct PackedAction {
    kind: u8,
    timer: u8,
    ms: u32,
}

/// Every timer, in declaration order: `TIMERS[t as usize] == t`.
const TIMERS: [TxnTimer; 12] = {
    use TxnTimer::*;
    [A, B, D, E, F, G, H, I, J, K, L, M]
};

impl PackedAction {
    fn pack(action: Action) -> PackedAction {
        let (kind, timer, ms) = match action {
            Action::SendRequest => (0, None, 0),
            Action::SendAck => (1, None, 0),
            Action::SendResponse => (2, None, 0),
            Action::PassToTu => (3, None, 0),
            Action::Timeout(timer) => (4, Some(timer), 0),
            Action::TransportError => (5, None, 0),
            Action::Arm(timer, after) => (6, Some(timer), u32::try_from(after.as_millis()).unwrap_or(u32::MAX)),
            Action::Cancel(timer) => (7, Some(timer), 0),
            Action::Terminated => (8, None, 0),
        };
        PackedAction { kind, timer: timer.map_or(0, |t| t as u8), ms }
    }

    fn unpack(self) -> Action {
        let timer = TIMERS[usize::from(self.timer)];
        match self.kind {
            0 => Action::SendRequest,
            1 => Action::SendAck,
            2 => Action::SendResponse,
            3 => Action::PassToTu,
            4 => Action::Timeout(timer),
            5 => Action::TransportError,
            6 => Action::Arm(timer, Duration::from_millis(u64::from(self.ms))),
            7 => Action::Cancel(timer),
            _ => Action::Terminated,
        }
    }
}

impl Actions {
    fn push(&mut self, action: Action) -> &mut Self {
        let len = usize::from(self.len);
        assert!(len < MAX_ACTIONS, "invariant: a transition yields at most {MAX_ACTIONS} actions");
        self.items[len] = PackedAction::pack(action);
        self.len += 1;
        self
    }

    /// The actions in order.
    pub fn iter(&self) -> impl Iterator<Item = Action> + '_ {
        self.items[..usize::from(self.len)].iter().map(|packed| packed.unpack())
    }

    /// Whether there is no action (the event was absorbed or ignored).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Whether `action` is among them.
    pub fn contains(&self, action: Action) -> bool {
        let packed = PackedAction::pack(action);
        self.items[..usize::from(self.len)].contains(&packed)
    }
}

/// A response's class, all a transaction needs to know of it.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum ResponseClass {
    /// 1xx
    Provisional,
    /// 2xx
    Success,
    /// 3xx-6xx
    Failure,
}

impl ResponseClass {
    /// The class of a status code (100-699).
    pub fn of(code: u16) -> ResponseClass {
        match code {
            100..=199 => ResponseClass::Provisional,
            200..=299 => ResponseClass::Success,
            _ => ResponseClass::Failure,
        }
    }
}

/// Events a client transaction takes.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum ClientEvent {
    /// The TU hands over the request: send it.
    Send,
    /// A response matched this transaction.
    Response(ResponseClass),
    /// A timer fired.
    Timer(TxnTimer),
    /// The transport could not send.
    TransportError,
}

/// Events a server transaction takes.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum ServerEvent {
    /// A retransmission of the request that created the transaction.
    Request,
    /// An ACK matched this (INVITE) transaction.
    Ack,
    /// The TU sends a response of this class.
    TuResponse(ResponseClass),
    /// A timer fired.
    Timer(TxnTimer),
    /// The transport could not send.
    TransportError,
}

/// The duration for a wait timer: `unreliable` on UDP, zero on reliable transports.
fn wait(reliable: bool, unreliable: Duration) -> Duration {
    if reliable { Duration::ZERO } else { unreliable }
}

#[cfg(test)]
mod tests;
