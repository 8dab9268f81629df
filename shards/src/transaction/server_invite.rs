//! Server INVITE transaction: RFC 3261 §17.2.1, figure 7, with RFC 6026's
//! `Accepted` state (after a 2xx the transaction absorbs retransmitted
//! INVITEs and passes ACKs up until timer L).

use core::time::Duration;

use serde::{Deserialize, Serialize};

use super::{Action, Actions, ResponseClass, ServerEvent, TimerConfig, TxnTimer, wait};

/// States of figure 7 (RFC 6026 figure 5).
#[derive(Copy, Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ServerInviteState {
    /// INVITE received; provisional responses may be sent.
    Proceeding,
    /// A 300-699 was sent; retransmitting it until the ACK (timers G, H).
    Completed,
    /// The ACK arrived; absorbing ACK retransmissions (timer I).
    Confirmed,
    /// A 2xx was sent; absorbing INVITE retransmissions, passing ACKs up (timer L).
    Accepted,
    /// Over.
    Terminated,
}

/// A server INVITE transaction's state and its response retransmit interval.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServerInvite {
    /// Current state.
    pub state: ServerInviteState,
    /// The next timer G interval (doubles up to T2).
    pub timer_g: Duration,
    /// Whether the transport is reliable.
    pub reliable: bool,
    /// Whether a response has been sent (so a retransmitted INVITE can be answered).
    pub responded: bool,
}

impl ServerInvite {
    /// A transaction created by an INVITE (already passed to the TU by the shard).
    pub fn new(reliable: bool, cfg: &TimerConfig) -> Self {
        ServerInvite { state: ServerInviteState::Proceeding, timer_g: cfg.t1, reliable, responded: false }
    }

    /// One transition of figure 7.
    pub fn on(&mut self, event: ServerEvent, cfg: &TimerConfig) -> Actions {
        use ServerInviteState::*;
        let mut out = Actions::default();
        match (self.state, event) {
            (Proceeding, ServerEvent::Request) if self.responded => {
                out.push(Action::SendResponse);
            }
            (Proceeding, ServerEvent::TuResponse(ResponseClass::Provisional)) => {
                self.responded = true;
                out.push(Action::SendResponse);
            }
            (Proceeding, ServerEvent::TuResponse(ResponseClass::Success)) => {
                self.responded = true;
                self.state = Accepted;
                out.push(Action::SendResponse).push(Action::Arm(TxnTimer::L, cfg.t1_x64()));
            }
            (Proceeding, ServerEvent::TuResponse(ResponseClass::Failure)) => {
                self.responded = true;
                self.state = Completed;
                out.push(Action::SendResponse);
                if !self.reliable {
                    out.push(Action::Arm(TxnTimer::G, self.timer_g));
                }
                out.push(Action::Arm(TxnTimer::H, cfg.t1_x64()));
            }
            (Completed, ServerEvent::Request) => {
                out.push(Action::SendResponse);
            }
            (Completed, ServerEvent::Timer(TxnTimer::G)) => {
                self.timer_g = (self.timer_g * 2).min(cfg.t2);
                out.push(Action::SendResponse).push(Action::Arm(TxnTimer::G, self.timer_g));
            }
            (Completed, ServerEvent::Timer(TxnTimer::H)) => {
                self.state = Terminated;
                out.push(Action::Cancel(TxnTimer::G)).push(Action::Timeout(TxnTimer::H)).push(Action::Terminated);
            }
            (Completed, ServerEvent::Ack) => {
                self.state = Confirmed;
                out.push(Action::Cancel(TxnTimer::G))
                    .push(Action::Cancel(TxnTimer::H))
                    .push(Action::Arm(TxnTimer::I, wait(self.reliable, cfg.t4)));
            }
            (Confirmed, ServerEvent::Timer(TxnTimer::I)) | (Accepted, ServerEvent::Timer(TxnTimer::L)) => {
                self.state = Terminated;
                out.push(Action::Terminated);
            }
            (Accepted, ServerEvent::Ack) => {
                // RFC 6026 §7.1: the ACK for a 2xx goes to the TU.
                out.push(Action::PassToTu);
            }
            (Accepted, ServerEvent::TuResponse(ResponseClass::Success)) => {
                // The TU retransmits its 2xx through the transaction.
                out.push(Action::SendResponse);
            }
            (Proceeding | Completed | Accepted, ServerEvent::TransportError) => {
                self.state = Terminated;
                out.push(Action::Cancel(TxnTimer::G)).push(Action::TransportError).push(Action::Terminated);
            }
            // Retransmitted INVITEs in Accepted/Confirmed, ACKs in Confirmed, stale timers: absorbed.
            _ => {}
        }
        out
    }
}
