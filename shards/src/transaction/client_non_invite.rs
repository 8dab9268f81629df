//! Client non-INVITE transaction: RFC 3261 §17.1.2, figure 6.

use core::time::Duration;

use serde::{Deserialize, Serialize};

use super::{Action, Actions, ClientEvent, ResponseClass, TimerConfig, TxnTimer, wait};

/// States of figure 6.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ClientNonInviteState {
    /// Request sent, nothing heard.
    Trying,
    /// A provisional response arrived.
    Proceeding,
    /// A final response arrived; absorbing retransmissions (timer K).
    Completed,
    /// Over.
    Terminated,
}

/// A client non-INVITE transaction's state and its retransmit interval.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClientNonInvite {
    /// Current state.
    pub state: ClientNonInviteState,
    /// The next timer E interval (doubles up to T2).
    pub timer_e: Duration,
    /// Whether the transport is reliable.
    pub reliable: bool,
}

impl ClientNonInvite {
    /// A transaction about to send its request (feed it [`ClientEvent::Send`]).
    pub fn new(reliable: bool, cfg: &TimerConfig) -> Self {
        ClientNonInvite { state: ClientNonInviteState::Trying, timer_e: cfg.t1, reliable }
    }

    /// One transition of figure 6.
    pub fn on(&mut self, event: ClientEvent, cfg: &TimerConfig) -> Actions {
        use ClientNonInviteState::*;
        let mut out = Actions::default();
        match (self.state, event) {
            (Trying, ClientEvent::Send) => {
                out.push(Action::SendRequest);
                if !self.reliable {
                    out.push(Action::Arm(TxnTimer::E, self.timer_e));
                }
                out.push(Action::Arm(TxnTimer::F, cfg.t1_x64()));
            }
            (Trying, ClientEvent::Timer(TxnTimer::E)) => {
                self.timer_e = (self.timer_e * 2).min(cfg.t2);
                out.push(Action::SendRequest).push(Action::Arm(TxnTimer::E, self.timer_e));
            }
            (Proceeding, ClientEvent::Timer(TxnTimer::E)) => {
                // §17.1.2.2: in Proceeding, retransmit every T2.
                self.timer_e = cfg.t2;
                out.push(Action::SendRequest).push(Action::Arm(TxnTimer::E, self.timer_e));
            }
            (Trying | Proceeding, ClientEvent::Timer(TxnTimer::F)) => {
                self.state = Terminated;
                out.push(Action::Cancel(TxnTimer::E)).push(Action::Timeout(TxnTimer::F)).push(Action::Terminated);
            }
            (Trying | Proceeding, ClientEvent::Response(ResponseClass::Provisional)) => {
                self.state = Proceeding;
                out.push(Action::PassToTu);
            }
            (Trying | Proceeding, ClientEvent::Response(ResponseClass::Success | ResponseClass::Failure)) => {
                self.state = Completed;
                out.push(Action::Cancel(TxnTimer::E))
                    .push(Action::Cancel(TxnTimer::F))
                    .push(Action::PassToTu)
                    .push(Action::Arm(TxnTimer::K, wait(self.reliable, cfg.t4)));
            }
            (Completed, ClientEvent::Timer(TxnTimer::K)) => {
                self.state = Terminated;
                out.push(Action::Terminated);
            }
            (Trying | Proceeding, ClientEvent::TransportError) => {
                self.state = Terminated;
                out.push(Action::Cancel(TxnTimer::E))
                    .push(Action::Cancel(TxnTimer::F))
                    .push(Action::TransportError)
                    .push(Action::Terminated);
            }
            // Retransmitted responses in Completed, stale timers: absorbed.
            _ => {}
        }
        out
    }
}
