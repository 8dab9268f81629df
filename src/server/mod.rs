//! The runtime: the only code that does network I/O. One glommio executor per
//! shard, pinned to its core; every shard binds the SIP address with
//! SO_REUSEPORT, so the kernel spreads datagrams over them; a datagram whose
//! stripe belongs to another shard moves there over a bounded channel mesh
//! (the buffer moves, its bytes are not copied).
//!
//! Per shard, the driver loop of DESIGN.md §2 runs in three tasks that share
//! the shard (`Rc<RefCell<_>>`, never borrowed across an await): receive a
//! datagram, take datagrams forwarded by other shards, fire timers. Each
//! calls `handle`, takes every output at once, then sends.
//!
//! Shutdown (SIGINT, SIGTERM): the shards stop accepting new calls (503 with
//! Retry-After), let live transactions finish up to the drain bound, print their
//! counters and exit.

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use futures_lite::StreamExt;
use glommio::channels::channel_mesh::{Full, MeshBuilder, Senders};
use glommio::net::UdpSocket;
use glommio::{LocalExecutorBuilder, Placement};
use sipshard_shards::proxy::{Proxy, ProxyStats};
use sipshard_shards::shard::{Input, Output, Peer, Shard, ShardConfig, ShardStats, Transport};
use sipshard_shards::{DEFAULT_STRIPES, NodeId, ShardId, StripeMap};

use crate::config::Settings;

/// Largest datagram taken from the socket (a UDP payload's maximum).
const MAX_DATAGRAM: usize = 65_535;

/// Depth of each shard-to-shard channel; a full channel makes the sender wait.
const MESH_DEPTH: usize = 1_024;

/// How often the timer task looks at the wheel when nothing is due sooner, and at the stop flag.
const TICK: Duration = Duration::from_millis(10);

/// A datagram moving between shards: to the shard that owns its stripe, or (test
/// steering) to a shard that will treat it as received from its socket.
struct Hop {
    peer: Peer,
    bytes: Vec<u8>,
    /// Handle as if received from the socket (may be moved on again), not as routed here.
    as_received: bool,
}

/// What a shard reports when it stops.
#[derive(Debug)]
pub(crate) struct ShardReport {
    /// Which shard.
    pub(crate) shard: usize,
    /// The core it ran on.
    pub(crate) core: usize,
    /// Its shard counters.
    pub(crate) stats: ShardStats,
    /// The proxy's counters.
    pub(crate) proxy: ProxyStats,
    /// Datagrams that could not be sent.
    pub(crate) send_errors: u64,
    /// Outputs for a transport this build does not run (TCP), dropped.
    pub(crate) unsupported_transport: u64,
}

/// Runs the server until SIGINT or SIGTERM; returns each shard's counters.
pub(crate) fn run(settings: Settings) -> anyhow::Result<Vec<ShardReport>> {
    let stop = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(signal, Arc::clone(&stop)).context("installing the signal handler")?;
    }
    run_until(settings, stop)
}

/// Runs the server until `stop` is set.
pub(crate) fn run_until(settings: Settings, stop: Arc<AtomicBool>) -> anyhow::Result<Vec<ShardReport>> {
    let shards = settings.cores.len();
    if shards == 0 {
        bail!("no shard to run: no core available");
    }
    let settings = fit_io_memory(settings, memlock_limit())?;
    let mesh = MeshBuilder::<Hop, Full>::full(shards, MESH_DEPTH);
    let stripes = StripeMap::balanced(1, DEFAULT_STRIPES, &[NodeId(0)], shards as u16, 1);
    let mut handles = Vec::with_capacity(shards);
    for (index, &core) in settings.cores.iter().enumerate() {
        let (mesh, stripes, settings, stop) = (mesh.clone(), stripes.clone(), settings.clone(), Arc::clone(&stop));
        let handle = LocalExecutorBuilder::new(Placement::Fixed(core))
            .name(&format!("shard-{index}"))
            .io_memory(settings.io_memory)
            .spawn(move || async move { shard_main(index, core, settings, stripes, mesh, stop).await })
            .map_err(|e| anyhow::anyhow!("starting shard {index} on core {core}: {e}"))?;
        handles.push(handle);
    }
    tracing::info!(shards, listen = %settings.listen, cores = ?settings.cores, "sipshard running");
    let mut reports = Vec::with_capacity(shards);
    for (index, handle) in handles.into_iter().enumerate() {
        match handle.join() {
            Ok(Ok(report)) => reports.push(report),
            Ok(Err(e)) => return Err(e.context(format!("shard {index}"))),
            Err(e) => return Err(executor_error(e, &settings, index)),
        }
    }
    Ok(reports)
}

/// glommio needs at least this much locked memory per executor for its rings.
const MIN_MEMLOCK_PER_SHARD: u64 = 512 * 1024;

/// The locked-memory limit (`ulimit -l`) in bytes, from /proc/self/limits; `None` if unlimited or unknown.
fn memlock_limit() -> Option<u64> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max locked memory"))?;
    line.split_whitespace().nth(3)?.parse().ok()
}

/// Sizes io_memory so that every shard's buffers fit half the locked-memory limit (the
/// rings take the rest); fails with what to change when even the minimum does not fit.
fn fit_io_memory(mut settings: Settings, limit: Option<u64>) -> anyhow::Result<Settings> {
    let Some(limit) = limit else { return Ok(settings) };
    let shards = settings.cores.len() as u64;
    if limit < MIN_MEMLOCK_PER_SHARD {
        bail!(
            "the locked-memory limit is {} KiB; io_uring needs at least {} KiB per process. Raise it \
             (`ulimit -l`, LimitMEMLOCK= in the systemd unit, memlock in /etc/security/limits.conf); see tuning.md",
            limit / 1024,
            MIN_MEMLOCK_PER_SHARD / 1024
        );
    }
    let fits = (limit / 2 / shards) as usize & !4095;
    if settings.io_memory > fits {
        if fits < 64 * 1024 {
            bail!(
                "{shards} shards do not fit the locked-memory limit of {} KiB (each needs at least 128 KiB): \
                 lower server.shards or raise the limit (`ulimit -l`); see tuning.md",
                limit / 1024
            );
        }
        tracing::info!(
            configured_kib = settings.io_memory / 1024,
            used_kib = fits / 1024,
            memlock_kib = limit / 1024,
            "io_memory lowered to fit the locked-memory limit"
        );
        settings.io_memory = fits;
    }
    Ok(settings)
}

/// Turns glommio's start-up failure into an error that says what to change.
fn executor_error(e: glommio::GlommioError<()>, settings: &Settings, index: usize) -> anyhow::Error {
    let text = e.to_string();
    let hint = if text.contains("Cannot allocate memory") || text.contains("ENOMEM") || text.contains("memlock") {
        format!(
            "io_uring could not lock its memory: {} shards x {} KiB of io_memory plus ring memory exceed the \
             locked-memory limit (`ulimit -l`). Lower server.io_memory_kib or server.shards, or raise the \
             limit (LimitMEMLOCK= in the systemd unit, memlock in /etc/security/limits.conf); see tuning.md",
            settings.cores.len(),
            settings.io_memory / 1024
        )
    } else if text.contains("Operation not permitted") || text.contains("Function not implemented") {
        "io_uring is not available: a kernel of 5.8 or later with io_uring enabled is needed \
         (sysctl kernel.io_uring_disabled=0; containers may need a seccomp profile that allows it); see tuning.md"
            .to_owned()
    } else {
        "see tuning.md".to_owned()
    };
    anyhow::anyhow!("shard {index} could not start its executor: {text}. {hint}")
}

/// Test steering (`server.steer_to_wrong_shard`): picks, for a datagram, a shard that
/// does not own its stripe, with the same pure routing functions the shards use.
struct Steer {
    me: usize,
    shards: usize,
    map: StripeMap,
}

impl Steer {
    /// The shard to hand `bytes` to first, or `None` to handle it here (it is not ours).
    fn wrong_shard(&self, bytes: &[u8]) -> Option<usize> {
        let call_id = sipshard_parser::peek_call_id(bytes)?;
        let stripe = sipshard_shards::StripeId::of_call_id(call_id, self.map.stripe_count());
        let owner = usize::from(self.map.owner(stripe).shard.0);
        let wrong = (owner + 1) % self.shards;
        (wrong != owner && wrong != self.me).then_some(wrong)
    }
}

/// One shard's sockets, channels and state.
struct Driver {
    shard: RefCell<Shard<Proxy>>,
    udp: UdpSocket,
    mesh: Senders<Hop>,
    send_errors: std::cell::Cell<u64>,
    unsupported_transport: std::cell::Cell<u64>,
}

async fn shard_main(
    index: usize,
    core: usize,
    settings: Settings,
    stripes: StripeMap,
    mesh: MeshBuilder<Hop, Full>,
    stop: Arc<AtomicBool>,
) -> anyhow::Result<ShardReport> {
    if !settings.transports.udp || settings.transports.tcp {
        bail!("this build runs UDP only (server.transport = \"udp\")");
    }
    let udp = UdpSocket::bind(settings.listen)
        .map_err(|e| anyhow::anyhow!("binding UDP {}: {e} (is another process on that port?)", settings.listen))?;
    let (senders, mut receivers) = mesh.join().await.map_err(|e| anyhow::anyhow!("joining the shard mesh: {e}"))?;
    let config = ShardConfig {
        node: NodeId(0),
        shard: ShardId(index as u16),
        local: settings.listen,
        stripes,
        max_calls: settings.max_calls_per_shard,
        max_timers: 8 * settings.max_calls_per_shard,
        timers: settings.timers,
        seed: 0x5eed_0000 ^ index as u64 ^ (std::process::id() as u64) << 20,
        replicate: false,
        retry_after_s: settings.retry_after_s,
    };
    #[allow(clippy::disallowed_methods)] // The runtime owns the clock.
    let shard = Shard::new(config, Proxy::new(settings.proxy.clone()), Instant::now());
    let driver = Rc::new(Driver {
        shard: RefCell::new(shard),
        udp,
        mesh: senders,
        send_errors: Default::default(),
        unsupported_transport: Default::default(),
    });
    let done = Rc::new(std::cell::Cell::new(false));
    for (_, mut stream) in receivers.streams() {
        let (driver, done) = (Rc::clone(&driver), Rc::clone(&done));
        glommio::spawn_local(async move {
            while !done.get() {
                let Some(hop) = stream.next().await else { break };
                let Hop { peer, bytes, as_received } = hop;
                if !as_received {
                    driver.process(Input::Forwarded { peer, bytes: &bytes }).await;
                } else if let Some(owner) = driver.process(Input::Datagram { peer, bytes: &bytes }).await {
                    driver.hop(owner, Hop { peer, bytes, as_received: false }).await;
                }
            }
        })
        .detach();
    }
    let timers = {
        let (driver, done, stop) = (Rc::clone(&driver), Rc::clone(&done), Arc::clone(&stop));
        let drain = settings.drain;
        glommio::spawn_local(async move {
            let mut stopping_since: Option<Instant> = None;
            loop {
                #[allow(clippy::disallowed_methods)] // The runtime owns the clock.
                let now = Instant::now();
                let due = driver.shard.borrow().poll_timeout();
                let wait = due.map_or(TICK, |at| at.saturating_duration_since(now).min(TICK));
                glommio::timer::sleep(wait).await;
                driver.process(Input::Timeout).await;
                if stop.load(Ordering::Relaxed) {
                    let since = *stopping_since.get_or_insert_with(|| {
                        driver.shard.borrow_mut().set_draining(true);
                        now
                    });
                    if driver.shard.borrow().unanswered_transactions() == 0 || now.duration_since(since) >= drain {
                        done.set(true);
                        break;
                    }
                }
            }
        })
    };
    let steer = settings.steer_to_wrong_shard.then(|| Steer {
        me: index,
        shards: settings.cores.len(),
        map: driver.shard.borrow().stripe_map().clone(),
    });
    let receive = {
        let (driver, done) = (Rc::clone(&driver), Rc::clone(&done));
        glommio::spawn_local(async move {
            let mut buf = vec![0u8; MAX_DATAGRAM];
            while !done.get() {
                let received = futures_lite::future::or(async { Some(driver.udp.recv_from(&mut buf).await) }, async {
                    glommio::timer::sleep(TICK * 10).await;
                    None
                })
                .await;
                let Some(received) = received else { continue };
                let (n, from) = match received {
                    Ok(got) => got,
                    Err(e) => {
                        tracing::debug!(error = %e, "UDP receive failed");
                        continue;
                    }
                };
                let peer = Peer { addr: from, transport: Transport::Udp };
                if let Some(wrong) = steer.as_ref().and_then(|s| s.wrong_shard(&buf[..n])) {
                    let mut bytes = std::mem::replace(&mut buf, vec![0u8; MAX_DATAGRAM]);
                    bytes.truncate(n);
                    driver.hop(wrong, Hop { peer, bytes, as_received: true }).await;
                    continue;
                }
                // Only a datagram that moves to another shard gives up the buffer.
                if let Some(shard) = driver.process(Input::Datagram { peer, bytes: &buf[..n] }).await {
                    let mut bytes = std::mem::replace(&mut buf, vec![0u8; MAX_DATAGRAM]);
                    bytes.truncate(n);
                    driver.hop(shard, Hop { peer, bytes, as_received: false }).await;
                }
            }
        })
    };
    timers.await;
    receive.await;
    let shard = driver.shard.borrow();
    Ok(ShardReport {
        shard: index,
        core,
        stats: shard.stats(),
        proxy: shard.tu().stats(),
        send_errors: driver.send_errors.get(),
        unsupported_transport: driver.unsupported_transport.get(),
    })
}

impl Driver {
    /// `handle`, then every output taken at once (no borrow across an await), then the sends.
    /// Returns the shard a received datagram must move to, if another owns it.
    async fn process(&self, input: Input<'_>) -> Option<usize> {
        let mut outputs = Vec::new();
        {
            let mut shard = self.shard.borrow_mut();
            #[allow(clippy::disallowed_methods)] // The runtime owns the clock.
            shard.handle(Instant::now(), input);
            while let Some(output) = shard.poll_output() {
                outputs.push(output);
            }
        }
        let mut forward = None;
        for output in outputs {
            match output {
                Output::Transmit { peer, bytes } => self.transmit(peer, &bytes).await,
                Output::Forward { shard } => forward = Some(usize::from(shard.0)),
                // One node, no replication yet.
                Output::ForwardToNode { .. } | Output::Replicate(_) => {}
            }
        }
        forward
    }

    /// Moves a datagram to another shard (waits while its channel is full).
    async fn hop(&self, shard: usize, hop: Hop) {
        if self.mesh.send_to(shard, hop).await.is_err() {
            tracing::warn!(shard, "shard mesh closed");
        }
    }

    async fn transmit(&self, peer: Peer, bytes: &[u8]) {
        if peer.transport != Transport::Udp {
            self.unsupported_transport.set(self.unsupported_transport.get() + 1);
            return;
        }
        if let Err(e) = self.udp.send_to(bytes, peer.addr).await {
            self.send_errors.set(self.send_errors.get() + 1);
            tracing::debug!(error = %e, to = %peer.addr, "UDP send failed");
            let mut outputs = Vec::new();
            {
                let mut shard = self.shard.borrow_mut();
                #[allow(clippy::disallowed_methods)] // The runtime owns the clock.
                shard.handle(Instant::now(), Input::TransportError { peer, bytes });
                while let Some(output) = shard.poll_output() {
                    outputs.push(output);
                }
            }
            // A 408/503 caused by the failure goes out; a second failure is only counted.
            for output in outputs {
                if let Output::Transmit { peer, bytes } = output {
                    if self.udp.send_to(&bytes, peer.addr).await.is_err() {
                        self.send_errors.set(self.send_errors.get() + 1);
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    #[test]
    fn io_memory_is_lowered_to_fit_the_memlock_limit_or_refused() {
        let settings = Config::default().settings(&[0, 1]).expect("defaults");
        assert_eq!(settings.io_memory, 512 * 1024);
        let fitted = fit_io_memory(settings.clone(), Some(1024 * 1024)).expect("fits");
        assert_eq!(fitted.io_memory, 256 * 1024, "half of 1 MiB over two shards");
        assert_eq!(fit_io_memory(settings.clone(), Some(8 << 20)).expect("fits").io_memory, 512 * 1024);
        let error = fit_io_memory(settings.clone(), Some(256 * 1024)).expect_err("below glommio's minimum");
        assert!(error.to_string().contains("ulimit -l"), "{error}");
        assert_eq!(fit_io_memory(settings, None).expect("unlimited").io_memory, 512 * 1024);
    }
}
