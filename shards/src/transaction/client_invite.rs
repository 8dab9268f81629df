//! Client INVITE transaction: RFC 3261 §17.1.1, figure 5, with RFC 6026's
//! `Accepted` state (a 2xx no longer terminates the transaction: it waits
//! for timer M so that 2xx retransmissions still reach the TU).

use core::time::Duration;

use serde::{Deserialize, Serialize};

use super::{Action, Actions, ClientEvent, ResponseClass, TimerConfig, TxnTimer, wait};

/// States of figure 5 (RFC 6026 figure 3).
#[derive(Copy, Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ClientInviteState {
    /// Request sent, nothing heard.
    Calling,
    /// A provisional response arrived.
    Proceeding,
    /// A 300-699 arrived; absorbing its retransmissions (timer D).
    Completed,
    /// A 2xx arrived; passing retransmitted 2xx up until timer M (RFC 6026).
    Accepted,
    /// Over.
    Terminated,
}

/// A client INVITE transaction's state and its retransmit interval.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClientInvite {
    /// Current state.
    pub state: ClientInviteState,
    /// The next timer A interval (doubles on every retransmission).
    pub timer_a: Duration,
    /// Whether the transport is reliable.
    pub reliable: bool,
}

impl ClientInvite {
    /// A transaction about to send its INVITE (feed it [`ClientEvent::Send`]).
    pub fn new(reliable: bool, cfg: &TimerConfig) -> Self {
        ClientInvite { state: ClientInviteState::Calling, timer_a: cfg.t1, reliable }
    }

    /// One transition of figure 5.
    pub fn on(&mut self, event: ClientEvent, cfg: &TimerConfig) -> Actions {
        use ClientInviteState::*;
        let mut out = Actions::default();
        match (self.state, event) {
            (Calling, ClientEvent::Send) => {
                out.push(Action::SendRequest);
                if !self.reliable {
                    out.push(Action::Arm(TxnTimer::A, self.timer_a));
                }
                out.push(Action::Arm(TxnTimer::B, cfg.t1_x64()));
            }
            (Calling, ClientEvent::Timer(TxnTimer::A)) => {
                self.timer_a *= 2;
                out.push(Action::SendRequest).push(Action::Arm(TxnTimer::A, self.timer_a));
            }
            (Calling, ClientEvent::Timer(TxnTimer::B)) => {
                self.state = Terminated;
                out.push(Action::Timeout(TxnTimer::B)).push(Action::Terminated);
            }
            (Calling | Proceeding, ClientEvent::Response(ResponseClass::Provisional)) => {
                if self.state == Calling {
                    out.push(Action::Cancel(TxnTimer::A)).push(Action::Cancel(TxnTimer::B));
                }
                self.state = Proceeding;
                out.push(Action::PassToTu);
            }
            (Calling | Proceeding, ClientEvent::Response(ResponseClass::Success)) => {
                if self.state == Calling {
                    out.push(Action::Cancel(TxnTimer::A)).push(Action::Cancel(TxnTimer::B));
                }
                self.state = Accepted;
                out.push(Action::PassToTu).push(Action::Arm(TxnTimer::M, cfg.t1_x64()));
            }
            (Calling | Proceeding, ClientEvent::Response(ResponseClass::Failure)) => {
                if self.state == Calling {
                    out.push(Action::Cancel(TxnTimer::A)).push(Action::Cancel(TxnTimer::B));
                }
                self.state = Completed;
                // The response goes up before the ACK goes out (§17.1.1.2 orders neither): each
                // send wakes its receiver in the sender's time, and the caller waits on the
                // response, the callee only on the ACK to stop retransmitting.
                out.push(Action::PassToTu)
                    .push(Action::SendAck)
                    .push(Action::Arm(TxnTimer::D, wait(self.reliable, Duration::from_secs(32))));
            }
            (Completed, ClientEvent::Response(ResponseClass::Failure)) => {
                // A retransmitted final response: ACK it again, do not bother the TU.
                out.push(Action::SendAck);
            }
            (Completed, ClientEvent::Timer(TxnTimer::D)) | (Accepted, ClientEvent::Timer(TxnTimer::M)) => {
                self.state = Terminated;
                out.push(Action::Terminated);
            }
            (Accepted, ClientEvent::Response(ResponseClass::Success)) => {
                // RFC 6026 §8.4: retransmitted 2xx go to the TU, which re-sends its ACK.
                out.push(Action::PassToTu);
            }
            (Calling | Proceeding | Completed, ClientEvent::TransportError) => {
                self.state = Terminated;
                out.push(Action::TransportError).push(Action::Terminated);
            }
            // Everything else (a stale timer, a 1xx after a final response, ...) is absorbed.
            _ => {}
        }
        out
    }
}
