//! Transaction tests: every transition of figures 5-8 (RFC 6026 included),
//! the retransmission schedules under a fake clock with the shard's timer
//! wheel, and client/server pairs over a seeded lossy link.

use core::time::Duration;

use super::*;
use crate::timer::{TimerId, TimerWheel};

const CFG: TimerConfig =
    TimerConfig { t1: Duration::from_millis(500), t2: Duration::from_secs(4), t4: Duration::from_secs(5) };

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn acts(list: &[Action]) -> Vec<Action> {
    list.to_vec()
}

fn run<E: Copy>(mut on: impl FnMut(E) -> Actions, events: &[E]) -> Vec<Vec<Action>> {
    events.iter().map(|&e| on(e).iter().collect()).collect()
}

use Action::*;
use ClientEvent as C;
use ResponseClass::*;
use ServerEvent as S;
use TxnTimer::*;

#[test]
fn client_invite_figure_5_with_rfc6026() {
    // Calling -> Proceeding -> Completed (3xx-6xx) -> Terminated (D), UDP.
    let mut t = ClientInvite::new(false, &CFG);
    let out = run(|e| t.on(e, &CFG), &[C::Send, C::Timer(A), C::Response(Provisional), C::Response(Provisional)]);
    assert_eq!(out[0], acts(&[SendRequest, Arm(A, ms(500)), Arm(B, ms(32_000))]));
    assert_eq!(out[1], acts(&[SendRequest, Arm(A, ms(1_000))]));
    assert_eq!(out[2], acts(&[Cancel(A), Cancel(B), PassToTu]));
    assert_eq!(out[3], acts(&[PassToTu]));
    assert_eq!(t.state, ClientInviteState::Proceeding);
    let out =
        run(|e| t.on(e, &CFG), &[C::Response(Failure), C::Response(Failure), C::Response(Provisional), C::Timer(D)]);
    assert_eq!(out[0], acts(&[PassToTu, SendAck, Arm(D, ms(32_000))]));
    assert_eq!(out[1], acts(&[SendAck]), "a retransmitted final response is ACKed again, not passed up");
    assert_eq!(out[2], acts(&[]));
    assert_eq!(out[3], acts(&[Terminated]));
    assert_eq!(t.state, ClientInviteState::Terminated);

    // Calling -> Accepted (2xx) -> retransmitted 2xx passed up -> Terminated (M).
    let mut t = ClientInvite::new(false, &CFG);
    let out = run(
        |e| t.on(e, &CFG),
        &[C::Send, C::Response(Success), C::Response(Success), C::Response(Failure), C::Timer(M)],
    );
    assert_eq!(out[1], acts(&[Cancel(A), Cancel(B), PassToTu, Arm(M, ms(32_000))]));
    assert_eq!(out[2], acts(&[PassToTu]));
    assert_eq!(out[3], acts(&[]));
    assert_eq!(out[4], acts(&[Terminated]));

    // Calling -> timer B -> Terminated, timeout reported; transport error likewise.
    let mut t = ClientInvite::new(false, &CFG);
    let out = run(|e| t.on(e, &CFG), &[C::Send, C::Timer(B), C::Timer(A)]);
    assert_eq!(out[1], acts(&[Timeout(B), Terminated]));
    assert_eq!(out[2], acts(&[]), "timers after termination are ignored");
    let mut t = ClientInvite::new(false, &CFG);
    let out = run(|e| t.on(e, &CFG), &[C::Send, C::TransportError]);
    assert_eq!(out[1], acts(&[TransportError, Terminated]));

    // Reliable transport: no timer A, timer D is zero.
    let mut t = ClientInvite::new(true, &CFG);
    let out = run(|e| t.on(e, &CFG), &[C::Send, C::Response(Failure)]);
    assert_eq!(out[0], acts(&[SendRequest, Arm(B, ms(32_000))]));
    assert_eq!(out[1], acts(&[Cancel(A), Cancel(B), PassToTu, SendAck, Arm(D, Duration::ZERO)]));
}

#[test]
fn client_non_invite_figure_6() {
    let mut t = ClientNonInvite::new(false, &CFG);
    let out = run(
        |e| t.on(e, &CFG),
        &[
            C::Send,
            C::Timer(E),
            C::Response(Provisional),
            C::Timer(E),
            C::Response(Success),
            C::Response(Success),
            C::Timer(K),
        ],
    );
    assert_eq!(out[0], acts(&[SendRequest, Arm(E, ms(500)), Arm(F, ms(32_000))]));
    assert_eq!(out[1], acts(&[SendRequest, Arm(E, ms(1_000))]));
    assert_eq!(out[2], acts(&[PassToTu]));
    assert_eq!(out[3], acts(&[SendRequest, Arm(E, ms(4_000))]), "Proceeding retransmits every T2");
    assert_eq!(out[4], acts(&[Cancel(E), Cancel(F), PassToTu, Arm(K, ms(5_000))]));
    assert_eq!(out[5], acts(&[]), "retransmitted final response absorbed");
    assert_eq!(out[6], acts(&[Terminated]));

    let mut t = ClientNonInvite::new(false, &CFG);
    let out = run(|e| t.on(e, &CFG), &[C::Send, C::Timer(F)]);
    assert_eq!(out[1], acts(&[Cancel(E), Timeout(F), Terminated]));
    let mut t = ClientNonInvite::new(false, &CFG);
    let out = run(|e| t.on(e, &CFG), &[C::Send, C::Response(Provisional), C::TransportError]);
    assert_eq!(out[2], acts(&[Cancel(E), Cancel(F), TransportError, Terminated]));
    let mut t = ClientNonInvite::new(true, &CFG);
    let out = run(|e| t.on(e, &CFG), &[C::Send, C::Response(Failure)]);
    assert_eq!(out[0], acts(&[SendRequest, Arm(F, ms(32_000))]));
    assert_eq!(out[1], acts(&[Cancel(E), Cancel(F), PassToTu, Arm(K, Duration::ZERO)]));
}

#[test]
fn server_invite_figure_7_with_rfc6026() {
    // Proceeding -> Completed -> Confirmed -> Terminated.
    let mut t = ServerInvite::new(false, &CFG);
    let out = run(
        |e| t.on(e, &CFG),
        &[
            S::Request,
            S::TuResponse(Provisional),
            S::Request,
            S::TuResponse(Failure),
            S::Request,
            S::Timer(G),
            S::Ack,
            S::Ack,
            S::Timer(I),
        ],
    );
    assert_eq!(out[0], acts(&[]), "nothing to retransmit before the TU answered");
    assert_eq!(out[1], acts(&[SendResponse]));
    assert_eq!(out[2], acts(&[SendResponse]), "a retransmitted INVITE gets the last provisional again");
    assert_eq!(out[3], acts(&[SendResponse, Arm(G, ms(500)), Arm(H, ms(32_000))]));
    assert_eq!(out[4], acts(&[SendResponse]));
    assert_eq!(out[5], acts(&[SendResponse, Arm(G, ms(1_000))]));
    assert_eq!(out[6], acts(&[Cancel(G), Cancel(H), Arm(I, ms(5_000))]));
    assert_eq!(out[7], acts(&[]), "ACK retransmissions absorbed in Confirmed");
    assert_eq!(out[8], acts(&[Terminated]));

    // Completed -> timer H -> Terminated with a timeout to the TU.
    let mut t = ServerInvite::new(false, &CFG);
    let out = run(|e| t.on(e, &CFG), &[S::TuResponse(Failure), S::Timer(H)]);
    assert_eq!(out[1], acts(&[Cancel(G), Timeout(H), Terminated]));

    // Proceeding -> Accepted (2xx): INVITE retransmissions absorbed, ACK and 2xx retransmits pass.
    let mut t = ServerInvite::new(false, &CFG);
    let out =
        run(|e| t.on(e, &CFG), &[S::TuResponse(Success), S::Request, S::Ack, S::TuResponse(Success), S::Timer(L)]);
    assert_eq!(out[0], acts(&[SendResponse, Arm(L, ms(32_000))]));
    assert_eq!(out[1], acts(&[]));
    assert_eq!(out[2], acts(&[PassToTu]));
    assert_eq!(out[3], acts(&[SendResponse]));
    assert_eq!(out[4], acts(&[Terminated]));

    let mut t = ServerInvite::new(false, &CFG);
    assert_eq!(run(|e| t.on(e, &CFG), &[S::TransportError])[0], acts(&[Cancel(G), TransportError, Terminated]));
    let mut t = ServerInvite::new(true, &CFG);
    let out = run(|e| t.on(e, &CFG), &[S::TuResponse(Failure), S::Ack]);
    assert_eq!(out[0], acts(&[SendResponse, Arm(H, ms(32_000))]), "no timer G on a reliable transport");
    assert_eq!(out[1], acts(&[Cancel(G), Cancel(H), Arm(I, Duration::ZERO)]));
}

#[test]
fn server_non_invite_figure_8() {
    let mut t = ServerNonInvite::new(false);
    let out = run(
        |e| t.on(e, &CFG),
        &[
            S::Request,
            S::TuResponse(Provisional),
            S::Request,
            S::TuResponse(Success),
            S::Request,
            S::TuResponse(Failure),
            S::Timer(J),
        ],
    );
    assert_eq!(out[0], acts(&[]), "a retransmission in Trying is absorbed");
    assert_eq!(out[1], acts(&[SendResponse]));
    assert_eq!(out[2], acts(&[SendResponse]));
    assert_eq!(out[3], acts(&[SendResponse, Arm(J, ms(32_000))]));
    assert_eq!(out[4], acts(&[SendResponse]), "retransmissions get the final response again");
    assert_eq!(out[5], acts(&[]), "the TU cannot send a second final response");
    assert_eq!(out[6], acts(&[Terminated]));
    let mut t = ServerNonInvite::new(true);
    assert_eq!(run(|e| t.on(e, &CFG), &[S::TuResponse(Success)])[0], acts(&[SendResponse, Arm(J, Duration::ZERO)]));
    let mut t = ServerNonInvite::new(false);
    assert_eq!(
        run(|e| t.on(e, &CFG), &[S::TuResponse(Provisional), S::TransportError])[1],
        acts(&[TransportError, Terminated])
    );
}

/// Drives one transaction with the real timer wheel and a fake clock, with no
/// peer (nothing ever answers): returns (ms, action) for every send and TU report.
fn schedule<E: Copy>(mut on: impl FnMut(E) -> Actions, start: E, timer: impl Fn(TxnTimer) -> E) -> Vec<(u64, Action)> {
    let mut wheel: TimerWheel<TxnTimer> = TimerWheel::new(16, 0);
    let mut armed: Vec<(TxnTimer, TimerId)> = Vec::new();
    let mut log = Vec::new();
    let mut apply = |now: u64, actions: Actions, wheel: &mut TimerWheel<TxnTimer>, log: &mut Vec<(u64, Action)>| {
        let mut over = false;
        for action in actions.iter() {
            match action {
                Arm(t, after) => armed.push((t, wheel.arm(now + after.as_millis() as u64, t).expect("room"))),
                Cancel(t) => armed.retain(|&(k, id)| k != t || wheel.cancel(id).is_none()),
                Terminated => over = true,
                other => log.push((now, other)),
            }
        }
        over
    };
    let mut over = apply(0, on(start), &mut wheel, &mut log);
    while !over {
        let now = wheel.next_deadline_ms().expect("a live transaction has a timer");
        while let Some((_, t)) = wheel.poll_expired(now) {
            over |= apply(now, on(timer(t)), &mut wheel, &mut log);
        }
    }
    log
}

#[test]
fn retransmission_schedules_double_up_to_t2_and_time_out() {
    // Timer E: 500, 1000, 2000, 4000, 4000, ... until F at 64*T1.
    let mut t = ClientNonInvite::new(false, &CFG);
    let log = schedule(|e| t.on(e, &CFG), C::Send, C::Timer);
    let sends: Vec<u64> = log.iter().filter(|(_, a)| *a == SendRequest).map(|(t, _)| *t).collect();
    assert_eq!(sends, vec![0, 500, 1_500, 3_500, 7_500, 11_500, 15_500, 19_500, 23_500, 27_500, 31_500]);
    assert_eq!(log.last(), Some(&(32_000, Timeout(F))));

    // Timer A doubles without a cap until B at 64*T1.
    let mut t = ClientInvite::new(false, &CFG);
    let log = schedule(|e| t.on(e, &CFG), C::Send, C::Timer);
    let sends: Vec<u64> = log.iter().filter(|(_, a)| *a == SendRequest).map(|(t, _)| *t).collect();
    assert_eq!(sends, vec![0, 500, 1_500, 3_500, 7_500, 15_500, 31_500]);
    assert_eq!(log.last(), Some(&(32_000, Timeout(B))));

    // Timer G: the final response is resent at 500, 1000, 2000, 4000, 4000... until H.
    let mut t = ServerInvite::new(false, &CFG);
    let log = schedule(|e| t.on(e, &CFG), S::TuResponse(Failure), S::Timer);
    let sends: Vec<u64> = log.iter().filter(|(_, a)| *a == SendResponse).map(|(t, _)| *t).collect();
    assert_eq!(sends, vec![0, 500, 1_500, 3_500, 7_500, 11_500, 15_500, 19_500, 23_500, 27_500, 31_500]);
    assert_eq!(log.last(), Some(&(32_000, Timeout(H))));
}

#[test]
fn actions_keep_every_action_as_pushed() {
    let timers = [A, B, D, E, F, G, H, I, J, K, L, M];
    let mut all = vec![SendRequest, SendAck, SendResponse, PassToTu, TransportError, Terminated];
    for t in timers {
        all.extend([Timeout(t), Cancel(t), Arm(t, ms(0)), Arm(t, ms(500)), Arm(t, ms(4_000_000_000))]);
    }
    for chunk in all.chunks(MAX_ACTIONS) {
        let mut actions = Actions::default();
        for &action in chunk {
            actions.push(action);
        }
        assert_eq!(actions.iter().collect::<Vec<_>>(), chunk, "round trip");
        assert!(chunk.iter().all(|&action| actions.contains(action)));
        assert!(!actions.contains(Arm(A, ms(1))), "another duration is another action");
    }
    let size = core::mem::size_of::<Actions>();
    assert!(size <= 52, "a transition's result stays small to move: {size} bytes");
}
