//! The subcommands and their flags.

use super::*;

#[derive(Subcommand)]
pub(crate) enum VirtualServers {
    /// Every virtual server.
    List,
    /// A new virtual server.
    Create {
        /// Its id: letters, digits, - _ . (at most 64).
        id: String,
        /// Its display name (the id if none).
        #[arg(long, default_value = "")]
        name: String,
    },
    /// Rename, disable or enable a virtual server.
    Set {
        /// Its id.
        id: String,
        /// A new display name.
        #[arg(long)]
        name: Option<String>,
        /// Disable it (its devices are refused, its data kept) or enable it (`false`).
        #[arg(long)]
        disabled: Option<bool>,
    },
    /// Delete a virtual server: its devices' certificates are revoked and its data removed.
    Delete {
        /// Its id.
        id: String,
    },
}

#[derive(Subcommand)]
pub(crate) enum Groups {
    /// The group tree.
    List,
    /// A new group.
    Create {
        /// Its id.
        id: String,
        /// Its display name.
        #[arg(long)]
        name: String,
        /// Its parent (default: the root group).
        #[arg(long)]
        parent: Option<String>,
    },
    /// A new display name.
    Rename {
        /// The group.
        id: String,
        /// Its new display name.
        #[arg(long)]
        name: String,
    },
    /// Moves a group, with its subgroups and devices, under another (their settings and
    /// distribution point placement follow).
    Move {
        /// The group.
        id: String,
        /// Its new parent.
        #[arg(long)]
        parent: String,
    },
    /// Removes an empty group.
    Delete {
        /// The group.
        id: String,
    },
}

#[derive(Args)]
pub(crate) struct DeviceFilter {
    /// Only devices in this group.
    #[arg(long)]
    pub(crate) group: Option<String>,
    /// Only devices with this tag.
    #[arg(long)]
    pub(crate) tag: Option<String>,
    /// Only devices with (true) or without (false) a kept connection.
    #[arg(long)]
    pub(crate) online: Option<bool>,
    /// Only devices seen at or after this Unix time.
    #[arg(long)]
    pub(crate) seen_since: Option<u64>,
    /// Only devices not seen since this Unix time.
    #[arg(long)]
    pub(crate) seen_before: Option<u64>,
    /// Only distribution points (true) or only other devices (false).
    #[arg(long)]
    pub(crate) dp: Option<bool>,
    /// Only devices with (true) or without (false) an open security issue.
    #[arg(long)]
    pub(crate) issue: Option<bool>,
    /// Devices per page (1 to 1000).
    #[arg(long, default_value_t = 1000)]
    pub(crate) limit: usize,
    /// Start after this device id (the `next` of a page).
    #[arg(long)]
    pub(crate) after: Option<String>,
    /// Only one page (default: every page).
    #[arg(long)]
    pub(crate) one_page: bool,
}

#[derive(Subcommand)]
pub(crate) enum Devices {
    /// Lists devices, page by page.
    List(DeviceFilter),
    /// One device: facts, certificate, connection, DP scopes, open issues.
    Show {
        /// The device.
        id: String,
    },
    /// Moves a device to a group (its settings and DP placement follow).
    Move {
        /// The device.
        id: String,
        /// The group.
        #[arg(long)]
        group: String,
    },
    /// Sets a device's tags (none: clears them).
    Tag {
        /// The device.
        id: String,
        /// A tag (repeat for more).
        #[arg(long = "tag")]
        tags: Vec<String>,
    },
    /// Puts a device in a network location (its distribution points serve it first).
    Locate {
        /// The device.
        id: String,
        /// The network location.
        #[arg(long, required_unless_present = "none")]
        location: Option<String>,
        /// Takes it out of any network location.
        #[arg(long, conflicts_with = "location")]
        none: bool,
    },
    /// Removes a device and revokes its certificate.
    Remove {
        /// The device.
        id: String,
    },
    /// A device's effective settings.
    Settings {
        /// The device.
        id: String,
    },
    /// Where each of a device's effective values came from, and what lost and why.
    Explain {
        /// The device.
        id: String,
        /// Only this application.
        #[arg(long)]
        app: Option<String>,
        /// Only this setting path (with --app).
        #[arg(long, requires = "app")]
        path: Option<String>,
    },
}

#[derive(Subcommand)]
pub(crate) enum Tokens {
    /// Issues an enrollment token (printed once).
    Issue {
        /// The group the device enrolls into.
        #[arg(long)]
        group: String,
        /// The one device id the token enrolls.
        #[arg(long)]
        device: Option<String>,
        /// How long it is valid, seconds.
        #[arg(long, default_value_t = 86_400)]
        ttl_secs: u64,
    },
    /// Pending enrollment tokens.
    List,
    /// Revokes a pending token (by the id `list` shows).
    Revoke {
        /// The token's id.
        id: String,
    },
}

#[derive(Subcommand)]
pub(crate) enum Policies {
    /// Every policy.
    List,
    /// One policy document.
    Show {
        /// The policy.
        id: String,
    },
    /// Creates or replaces a policy from a JSON document (its `id` names it).
    Put {
        /// The policy document.
        #[arg(long)]
        file: PathBuf,
    },
    /// Removes a policy.
    Delete {
        /// The policy.
        id: String,
    },
    /// Sets a policy's status; activating one makes the previously active policy of its
    /// application and group inactive in the same step.
    Status {
        /// The policy.
        id: String,
        /// The new status.
        #[arg(value_enum)]
        status: PolicyStatus,
    },
}

#[derive(Clone, Copy, clap::ValueEnum)]
pub(crate) enum PolicyStatus {
    /// Applied to the group's devices and inherited by subgroups.
    Active,
    /// Neither applied nor inherited.
    Inactive,
    /// Replaces the active policy for the group's own devices off the corporate network.
    OutOfOffice,
}

impl PolicyStatus {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            PolicyStatus::Active => "active",
            PolicyStatus::Inactive => "inactive",
            PolicyStatus::OutOfOffice => "out-of-office",
        }
    }
}

#[derive(Subcommand)]
pub(crate) enum Dps {
    /// The report of distribution points.
    List,
    /// Makes a device a distribution point of a scope.
    Assign {
        /// The device.
        #[arg(long)]
        device: String,
        #[command(flatten)]
        scope: DpScopeArgs,
    },
    /// Removes a device as a distribution point of a scope.
    Unassign {
        /// The device.
        #[arg(long)]
        device: String,
        #[command(flatten)]
        scope: DpScopeArgs,
    },
    /// Makes a device the active distribution point of a scope now.
    Activate {
        /// The device.
        #[arg(long)]
        device: String,
        #[command(flatten)]
        scope: DpScopeArgs,
    },
}

/// The scope of a distribution point: exactly one of these.
#[derive(Args)]
#[group(required = true, multiple = false)]
pub(crate) struct DpScopeArgs {
    /// A group and its subgroups.
    #[arg(long)]
    pub(crate) group: Option<String>,
    /// The devices placed in this network location (`devices locate`).
    #[arg(long)]
    pub(crate) network_location: Option<String>,
    /// The devices of the DP's own broadcast domain, as discovery finds it.
    #[arg(long)]
    pub(crate) broadcast_domain: bool,
}

impl DpScopeArgs {
    /// The scope's key in the API's paths.
    pub(crate) fn key(&self) -> String {
        match (&self.group, &self.network_location) {
            (Some(g), _) => g.clone(),
            (None, Some(l)) => format!("location~{l}"),
            (None, None) => "broadcast-domain~own".into(),
        }
    }

    /// The scope's fields in a request body.
    pub(crate) fn body(&self, device: &str) -> Value {
        match (&self.group, &self.network_location) {
            (Some(g), _) => json!({"device": device, "group": g}),
            (None, Some(l)) => json!({"device": device, "network_location": l}),
            (None, None) => json!({"device": device, "broadcast_domain": true}),
        }
    }
}

#[derive(Subcommand)]
pub(crate) enum Gateways {
    /// Gateways with their status: signal connection up, devices relayed.
    List,
    /// Registers a DMZ gateway: the server dials it at once.
    AddDmz {
        /// Its id.
        id: String,
        /// The address the server dials (HOST:PORT, an IP address).
        #[arg(long)]
        addr: String,
        /// A DNS name its certificate carries (repeat for more; the first is dialled).
        #[arg(long = "dns", required = true)]
        dns_names: Vec<String>,
    },
    /// Registers a remote-office gateway held by an enrolled device, bound to its
    /// certificate: the server takes tunnels from that certificate only.
    AddRemoteOffice {
        /// Its id.
        id: String,
        /// The device that holds the role.
        #[arg(long)]
        device: String,
        /// The gateway's certificate (PEM, as `pki issue-gateway` wrote it).
        #[arg(long)]
        certificate: PathBuf,
    },
    /// Unregisters a gateway (a DMZ gateway's signal connection is closed).
    Remove {
        /// Its id.
        id: String,
    },
}

#[derive(Subcommand)]
pub(crate) enum Updates {
    /// Update objects, with how many devices hold them.
    List,
    /// Uploads a file as an update object.
    Upload {
        /// The object's id.
        id: String,
        /// The file.
        #[arg(long)]
        file: PathBuf,
        /// Its display name.
        #[arg(long)]
        name: String,
        /// Its version.
        #[arg(long)]
        version: u64,
    },
    /// Publishes a file from the server's import directory.
    Import {
        /// The object's id.
        id: String,
        /// The file, relative to the server's import directory.
        #[arg(long)]
        path: String,
        /// Its display name.
        #[arg(long)]
        name: String,
        /// Its version.
        #[arg(long)]
        version: u64,
    },
}

#[derive(Subcommand)]
pub(crate) enum Issues {
    /// Open security issues.
    List {
        /// Only this device's.
        #[arg(long)]
        device: Option<String>,
        /// Only acknowledged (true) or unacknowledged (false) ones.
        #[arg(long)]
        acknowledged: Option<bool>,
    },
    /// Acknowledges an issue.
    Ack {
        /// The device.
        device: String,
        /// The issue's kind.
        kind: String,
    },
}

#[derive(Subcommand)]
pub(crate) enum Accounts {
    /// Every account.
    List,
    /// A new account (the password is read from standard input).
    Create {
        /// Its name.
        name: String,
        /// `administrator` or `auditor`.
        #[arg(long)]
        role: String,
    },
    /// Changes an account; its sessions are closed.
    Set {
        /// The account.
        name: String,
        /// A new role.
        #[arg(long)]
        role: Option<String>,
        /// Disables (true) or enables (false) it.
        #[arg(long)]
        disabled: Option<bool>,
        /// Reads a new password from standard input.
        #[arg(long)]
        password: bool,
    },
}

#[derive(Subcommand)]
pub(crate) enum ApiTokens {
    /// API tokens (never their secrets).
    List,
    /// Issues an API token acting as your account (the secret is printed once).
    Issue {
        /// What it is for.
        #[arg(long)]
        label: String,
    },
    /// Revokes an API token.
    Revoke {
        /// Its id.
        id: String,
    },
}
