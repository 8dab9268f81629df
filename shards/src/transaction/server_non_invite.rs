//! Server non-INVITE transaction: RFC 3261 §17.2.2, figure 8.

use serde::{Deserialize, Serialize};

use super::{Action, Actions, ResponseClass, ServerEvent, TimerConfig, TxnTimer, wait};

/// States of figure 8.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ServerNonInviteState {
    /// Request received, nothing sent.
    Trying,
    /// A provisional response was sent.
    Proceeding,
    /// A final response was sent; answering retransmissions with it (timer J).
    Completed,
    /// Over.
    Terminated,
}

/// A server non-INVITE transaction's state.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServerNonInvite {
    /// Current state.
    pub state: ServerNonInviteState,
    /// Whether the transport is reliable.
    pub reliable: bool,
}

impl ServerNonInvite {
    /// A transaction created by a request (already passed to the TU by the shard).
    pub fn new(reliable: bool) -> Self {
        ServerNonInvite { state: ServerNonInviteState::Trying, reliable }
    }

    /// One transition of figure 8.
    pub fn on(&mut self, event: ServerEvent, cfg: &TimerConfig) -> Actions {
        use ServerNonInviteState::*;
        let mut out = Actions::default();
        match (self.state, event) {
            (Proceeding | Completed, ServerEvent::Request) => {
                out.push(Action::SendResponse);
            }
            (Trying | Proceeding, ServerEvent::TuResponse(ResponseClass::Provisional)) => {
                self.state = Proceeding;
                out.push(Action::SendResponse);
            }
            (Trying | Proceeding, ServerEvent::TuResponse(ResponseClass::Success | ResponseClass::Failure)) => {
                self.state = Completed;
                out.push(Action::SendResponse).push(Action::Arm(TxnTimer::J, wait(self.reliable, cfg.t1_x64())));
            }
            (Completed, ServerEvent::Timer(TxnTimer::J)) => {
                self.state = Terminated;
                out.push(Action::Terminated);
            }
            (Proceeding | Completed, ServerEvent::TransportError) => {
                self.state = Terminated;
                out.push(Action::TransportError).push(Action::Terminated);
            }
            // A retransmission in Trying, TU responses after the final one, stale timers: absorbed.
            _ => {}
        }
        out
    }
}
