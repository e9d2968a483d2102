//! # outpost-server
//!
//! The Administration Server's core, growing piece by piece:
//!
//! - [`Storage`]: the server's one storage interface, over embedded SQLite (the default) or
//!   PostgreSQL (by URL): groups, devices, tokens, gateways, distribution point scopes and
//!   epochs, policies, events with retention, security issues and update objects, every row
//!   naming its server instance; versioned migrations; changes grouped into one commit and
//!   durable before they are acknowledged.
//! - [`Registry`]: the in-memory index of administration groups (a tree under the root
//!   group), enrolled devices (by id and by certificate fingerprint), registered connection
//!   gateways and one-time enrollment tokens, rebuilt from the database at start; each
//!   change is journaled as row writes ([`Op`]) to commit.
//! - [`enroll()`]: an agent's certificate signing request plus a token becomes a signed agent
//!   certificate bound to its device id (through `outpost-pki`), and a device in the token's
//!   group.
//! - [`AdminService`]: the server's side of every device connection, whether it came
//!   directly, through a DMZ gateway or through a remote-office gateway (the
//!   `outpost-gateway` crate hands them all over as one type): version negotiation,
//!   enrollment on the enrollment channel, and on authenticated connections sync (answered by
//!   a pluggable [`SyncSource`]), events, file chunks (from an [`ObjectStore`]) and pushed
//!   "sync now" over the kept connection.
//! - [`AdminServer`]: all of it assembled from an [`AdminServerConfig`] (TOML): the CA from
//!   the data directory, the database, the server's device port, and the DMZ gateways it
//!   dials.
//!
//! ```
//! use std::time::{Duration, SystemTime};
//! use outpost_pki::{PkiConfig, ServerCa};
//! use outpost_server::{Registry, enroll};
//! use outpost_wire::messages::EnrollRequest;
//!
//! let now = SystemTime::now();
//! let ca = ServerCa::create(PkiConfig::default(), now).unwrap();
//! let mut reg = Registry::new("server-1").unwrap();
//! reg.add_group("office", "Office", None).unwrap();
//! let token = reg.issue_token("office", None, Duration::from_secs(600), now).unwrap();
//!
//! // The agent makes a key pair and a CSR (here with rcgen).
//! let key = rcgen::KeyPair::generate().unwrap();
//! let csr = rcgen::CertificateParams::new(vec![]).unwrap().serialize_request(&key).unwrap();
//! let req = EnrollRequest {
//!     device_id: "laptop-1".into(),
//!     csr_der: csr.der().to_vec().into(),
//!     enrollment_token: token.clone(),
//!     group_hint: String::new(),
//! };
//! let resp = enroll(&mut reg, &ca, &req, now).unwrap();
//! assert_eq!(resp.group, "office");
//! assert!(reg.device("laptop-1").is_some());
//! // The token was single-use.
//! assert!(enroll(&mut reg, &ca, &EnrollRequest { device_id: "laptop-2".into(), ..req }, now).is_err());
//! ```

mod accounts;
pub mod api;
mod dp;
mod enroll;
mod error;
mod fleet;
#[cfg(any(fuzzing, test))]
#[doc(hidden)]
pub mod fuzz;
mod lock;
mod objects;
mod policy_sync;
mod registry;
mod runtime;
mod service;
mod storage;
pub mod store;
mod throttle;
mod udp_push;
mod virtual_servers;

pub use accounts::{
    Account, AccountBook, ApiToken, MAX_PASSWORD_LEN, MIN_PASSWORD_LEN, Role, SessionConfig,
    Sessions, hash_password, verify_password,
};
pub use api::{ApiConfig, DEFAULT_API_PORT, MAX_BODY, MAX_PAGE, Problem};
pub use dp::{DEFAULT_MULTICAST_PORT, DpCoordinator, DpReportRow, read_epoch_file};
pub use enroll::{
    SignedEnrollment, admit, enroll, record_enrollment, refusal_code, sign_enrollment,
};
pub use error::{EnrollmentRefusal, ServerError, StorageError};
pub use fleet::FleetSync;
pub use lock::{DataDirLock, LOCK_FILE};
pub use objects::{Staged, StoredObjects, announcement};
pub use policy_sync::{PolicySync, place_registry_devices, settings_document};
pub use registry::{
    Changes, Device, DpScope, FORMAT, GatewayRegistration, Group, MAX_REGISTRY_BYTES, MAX_TAGS,
    MAX_TOKEN_TTL, ROOT_GROUP, Registry, ReserveCertificate, TokenRecord, check_device_id,
    check_id,
};
pub use runtime::{AdminServer, AdminServerConfig};
pub use service::{
    AdminService, DeviceContext, ENROLLMENT_MAX_FRAME_LEN, EnrollmentRouter, FixedInterval,
    MemoryObjects, ObjectStore, ServiceConfig, ServiceStats, SyncSource,
};
pub use storage::{
    Backend, Counts, DatabaseConfig, EventQuery, EventRecord, Op, PolicyObjectKind, SCHEMA_VERSION,
    SQLITE_FILE, SecurityIssue, Snapshot, Storage, StoredEvent, Ticket, UpdateObject,
    VirtualServerRecord, policy_ops, policy_state,
};
pub use throttle::EnrollThrottle;
pub use udp_push::SyncNowSigner;
pub use virtual_servers::{Tenant, VirtualServers, VirtualServersConfig, check_virtual_id};
