//! Dialog records (RFC 3261 §12) as the roles store them in the call table,
//! one record per call in the stripe of its Call-ID (the table key), whole,
//! so that a replica that takes over can route every in-dialog request and
//! fire every call timer.
//!
//! - [`ProxyDialog`]: what a record-routing stateful proxy keeps of a call
//!   (both tags, both contacts and where they are, the route set, the INVITE
//!   CSeq, the call timers).
//! - [`B2buaCall`]: two full [`Dialog`]s (A leg, B leg) and the B leg's Call-ID.

use serde::{Deserialize, Serialize};

use crate::shard::Peer;

/// A dialog's state (§12.1).
#[derive(Copy, Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum DialogState {
    /// Created by a provisional response with a To tag.
    Early,
    /// Created or confirmed by a 2xx.
    Confirmed,
    /// Ended by BYE (kept until its timers run out).
    Terminated,
}

/// A call timer kept with the call (not a transaction timer).
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum CallTimer {
    /// No answer within the configured time: CANCEL (B2BUA) or 408.
    NoAnswer,
    /// Maximum call duration reached: BYE both legs.
    MaxDuration,
    /// Session refresh due (RFC 4028).
    SessionExpires,
    /// Proxy Timer C (§16.6 step 11).
    C,
}

/// One side of a dialog, as a user agent (or one leg of a B2BUA) keeps it (§12.1.1, §12.1.2).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Dialog {
    /// Our tag.
    pub local_tag: Box<str>,
    /// The peer's tag.
    pub remote_tag: Box<str>,
    /// Our URI (From of our requests).
    pub local_uri: Box<str>,
    /// The peer's URI (To of our requests).
    pub remote_uri: Box<str>,
    /// The peer's Contact: the Request-URI of our in-dialog requests.
    pub remote_target: Box<str>,
    /// Route set, in the order our requests carry it.
    pub route_set: Vec<Box<str>>,
    /// CSeq of our last request.
    pub local_cseq: u32,
    /// CSeq of the peer's last request.
    pub remote_cseq: u32,
    /// Where the peer is.
    pub peer: Peer,
    /// State.
    pub state: DialogState,
}

/// A record-routing proxy's view of a call.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProxyDialog {
    /// From tag (the caller's).
    pub caller_tag: Box<str>,
    /// To tag (the callee's).
    pub callee_tag: Box<str>,
    /// The caller's Contact.
    pub caller_contact: Box<str>,
    /// The callee's Contact.
    pub callee_contact: Box<str>,
    /// Where the caller is.
    pub caller: Peer,
    /// Where the callee is.
    pub callee: Peer,
    /// Record-Route set of the dialog.
    pub record_route: Vec<Box<str>>,
    /// CSeq of the INVITE that created it.
    pub invite_cseq: u32,
    /// State.
    pub state: DialogState,
    /// Call timers and their deadlines (ms on the owning shard's clock).
    pub timers: Vec<(CallTimer, u64)>,
}

/// A B2BUA call: two dialogs bridged.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct B2buaCall {
    /// The caller's leg (Call-ID: the record's key).
    pub a_leg: Dialog,
    /// The callee's leg.
    pub b_leg: Dialog,
    /// The B leg's Call-ID (fresh: topology hiding).
    pub b_call_id: Box<str>,
    /// CSeq of the latest INVITE sent on each leg (A, B): the ACK of its 2xx carries it.
    pub ack_cseq: [u32; 2],
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shard::Transport;
    use crate::stripe::StripeId;
    use crate::table::codec;

    fn peer(port: u16) -> Peer {
        Peer { addr: format!("192.0.2.10:{port}").parse().expect("addr"), transport: Transport::Udp }
    }

    #[test]
    fn dialog_records_survive_the_codec_with_their_timers() {
        let proxy = ProxyDialog {
            caller_tag: "1928301774".into(),
            callee_tag: "a6c85cf".into(),
            caller_contact: "<sip:alice@192.0.2.101:5060>".into(),
            callee_contact: "<sip:bob@192.0.2.201:5060>".into(),
            caller: peer(5060),
            callee: peer(5062),
            record_route: vec!["<sip:10.0.0.1;lr>".into()],
            invite_cseq: 314159,
            state: DialogState::Confirmed,
            timers: vec![(CallTimer::MaxDuration, 7_200_000)],
        };
        let bytes = codec::encode(StripeId(3), 2, &proxy);
        let (_, back): (_, ProxyDialog) = codec::decode(&bytes).expect("decodes");
        assert_eq!(back, proxy);
        let leg = |tag: &str| Dialog {
            local_tag: tag.into(),
            remote_tag: "r".into(),
            local_uri: "sip:a@x".into(),
            remote_uri: "sip:b@y".into(),
            remote_target: "sip:b@192.0.2.4".into(),
            route_set: vec![],
            local_cseq: 1,
            remote_cseq: 0,
            peer: peer(5070),
            state: DialogState::Early,
        };
        let call = B2buaCall { a_leg: leg("a"), b_leg: leg("b"), b_call_id: "b2b-1".into(), ack_cseq: [0, 1] };
        let (_, back): (_, B2buaCall) = codec::decode(&codec::encode(StripeId(3), 1, &call)).expect("decodes");
        assert_eq!(back, call);
    }
}
