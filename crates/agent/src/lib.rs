//! # outpost-agent
//!
//! The Network Agent's core: what runs on every managed device.
//!
//! - [`identity`]: the agent's key, certificate chain and server CA, loaded from its data
//!   directory, or obtained by enrolling directly with the server (enrollment is not relayed
//!   by gateways).
//! - [`protocol::AgentCore`]: the sans-IO state machine. It connects to the configured endpoints
//!   (the server or connection gateways) in order with exponential backoff and seeded
//!   jitter ([`outpost_wire::backoff`]), negotiates the protocol version, syncs at once and then every
//!   interval the server gives (clamped to 1 s..=24 h) or when the server pushes "sync now",
//!   reports the settings versions it holds, queues events (bounded, oldest dropped and
//!   counted) and drops them once acknowledged. It never reads the clock: time is passed in.
//! - [`Agent`]: the tokio driver over real TLS sockets, with the settings store
//!   ([`store`], written atomically) and broadcast-domain [`discovery`] beside it.
//! - [`overlay::effective`]: local settings over the received document, only on the paths
//!   the document does not lock (the convention is in [`overlay`]).
//! - [`distribution`]: announced updates and the distribution point role: fenced roles,
//!   multicast sending and receiving, the DP's unicast block service and resumable, verified
//!   downloads.
//!
//! The core on a virtual clock, with no sockets:
//!
//! ```
//! use std::collections::BTreeMap;
//! use std::time::{Duration, Instant};
//! use outpost_agent::protocol::{Action, AgentCore, CoreConfig, Input};
//! use outpost_agent::{AgentConfig, Endpoint};
//! use outpost_wire::Message;
//! use outpost_wire::messages::{HelloAck, SyncResponse};
//!
//! let mut config = AgentConfig::new("laptop-1", "/var/lib/outpost");
//! config.endpoints = vec![Endpoint::new("127.0.0.1:13000".parse()?, "gw.outpost.test")];
//! config.backoff.seed = Some(1);
//! let t0 = Instant::now();
//! let mut core = AgentCore::new(CoreConfig::from_agent(&config, 0), BTreeMap::new(), t0);
//! core.start(t0);
//! assert!(matches!(core.poll_action(), Some(Action::Connect(e)) if e.name == "gw.outpost.test"));
//! core.handle(Input::Connected, t0);
//! assert!(matches!(core.poll_action(), Some(Action::Send(Message::Hello(_)))));
//! core.handle(Input::Received(HelloAck { version: 1, ..Default::default() }.into()), t0);
//! // Connected: the first sync goes out at once.
//! assert!(matches!(core.poll_action(), Some(Action::Send(Message::SyncRequest(_)))));
//! let answer = SyncResponse { next_sync_secs: 60, ..Default::default() };
//! core.handle(Input::Received(answer.into()), t0);
//! // The answer's distribution part (DP assignments, updates) goes to the driver.
//! assert!(matches!(core.poll_action(), Some(Action::Distribution { .. })));
//! assert_eq!(core.poll_timeout(), Some(t0 + Duration::from_secs(60)));
//! core.handle_timeout(t0 + Duration::from_secs(60));
//! assert!(matches!(core.poll_action(), Some(Action::Send(Message::SyncRequest(_)))));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

mod config;
pub mod discovery;
pub mod distribution;
mod error;
#[cfg(any(fuzzing, test))]
#[doc(hidden)]
pub mod fuzz;
pub mod identity;
pub mod overlay;
pub mod protocol;
pub mod push;
pub mod renewal;
mod runtime;
pub mod store;

pub use config::{
    AgentConfig, BackoffConfig, DiscoveryConfig, DistributionConfig, Endpoint, EnrollmentConfig,
    MAX_CONFIG_FILE, MAX_NAME, RenewalConfig, valid_name,
};
pub use error::AgentError;
pub use runtime::{Agent, AgentStatus};

/// Starts the agent with `config` and runs it until it is refused for good or `shutdown`
/// completes, logging its state as it changes.
///
/// # Errors
/// As [`Agent::start`], or the refusal that stopped it.
pub async fn run(
    config: AgentConfig,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), AgentError> {
    let agent = Agent::start(config).await?;
    let mut status = agent.status.clone();
    tokio::pin!(shutdown);
    let mut last = (protocol::Phase::Waiting, 0u64);
    loop {
        tokio::select! {
            () = &mut shutdown => {
                agent.shutdown().await;
                return Ok(());
            }
            r = status.changed() => {
                let s = status.borrow_and_update().clone();
                if r.is_err() || s.stopped.is_some() {
                    break;
                }
                let now = (s.core.phase, s.core.syncs);
                if now != last {
                    last = now;
                    tracing::info!(
                        "agent: {:?} via {}, {} syncs, {} events queued{}",
                        s.core.phase,
                        s.core.endpoint.map_or_else(String::new, |e| format!("{} ({})", e.name, e.addr)),
                        s.core.syncs,
                        s.core.events_queued,
                        s.core.last_error.map_or_else(String::new, |e| format!(", last error: {e}")),
                    );
                }
            }
        }
    }
    agent.wait().await
}
