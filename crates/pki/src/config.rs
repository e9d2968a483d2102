//! Key algorithms and the issuance policy (serde configuration with validation).

use std::fmt;
use std::time::Duration;

use rcgen::KeyPair;
use serde::{Deserialize, Serialize};

use crate::error::{InputError, KeyError, PkiError, Result};
use crate::time::DAY;

/// Longest lifetime of an issued (non-CA) certificate, in days.
pub const MAX_LEAF_VALIDITY_DAYS: u32 = 397;

/// The key algorithm of a CA or of an issued certificate.
///
/// All are provided by aws-lc-rs, the crypto provider of the whole workspace.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
#[non_exhaustive]
pub enum KeyAlgorithm {
    /// ECDSA on P-256 with SHA-256 (the default: fast to generate and to verify).
    #[default]
    EcdsaP256,
    /// ECDSA on P-384 with SHA-384.
    EcdsaP384,
    /// Ed25519.
    Ed25519,
    /// RSA, 2048-bit modulus, PKCS#1 v1.5 with SHA-256.
    Rsa2048,
    /// RSA, 3072-bit modulus, PKCS#1 v1.5 with SHA-256.
    Rsa3072,
    /// RSA, 4096-bit modulus, PKCS#1 v1.5 with SHA-256.
    Rsa4096,
}

impl KeyAlgorithm {
    /// Every algorithm, for listing in help texts.
    pub const ALL: [KeyAlgorithm; 6] = [
        KeyAlgorithm::EcdsaP256,
        KeyAlgorithm::EcdsaP384,
        KeyAlgorithm::Ed25519,
        KeyAlgorithm::Rsa2048,
        KeyAlgorithm::Rsa3072,
        KeyAlgorithm::Rsa4096,
    ];

    /// The name used in configuration files (`ecdsa-p256`, `rsa2048`, ...).
    pub fn name(self) -> &'static str {
        match self {
            KeyAlgorithm::EcdsaP256 => "ecdsa-p256",
            KeyAlgorithm::EcdsaP384 => "ecdsa-p384",
            KeyAlgorithm::Ed25519 => "ed25519",
            KeyAlgorithm::Rsa2048 => "rsa2048",
            KeyAlgorithm::Rsa3072 => "rsa3072",
            KeyAlgorithm::Rsa4096 => "rsa4096",
        }
    }

    /// Parses a configuration name.
    ///
    /// # Errors
    /// [`KeyError::UnsupportedAlgorithm`] naming the value.
    pub fn from_name(name: &str) -> Result<Self> {
        Self::ALL
            .into_iter()
            .find(|a| a.name() == name)
            .ok_or_else(|| {
                PkiError::Key(KeyError::UnsupportedAlgorithm {
                    name: name.to_owned(),
                })
            })
    }

    /// Generates a fresh key pair of this algorithm.
    ///
    /// # Errors
    /// [`CertError::Generation`](crate::CertError::Generation) if the crypto provider fails.
    pub fn generate(self) -> Result<KeyPair> {
        let gen_err = PkiError::generation("key pair");
        match self {
            KeyAlgorithm::EcdsaP256 => KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256),
            KeyAlgorithm::EcdsaP384 => KeyPair::generate_for(&rcgen::PKCS_ECDSA_P384_SHA384),
            KeyAlgorithm::Ed25519 => KeyPair::generate_for(&rcgen::PKCS_ED25519),
            KeyAlgorithm::Rsa2048 => {
                KeyPair::generate_rsa_for(&rcgen::PKCS_RSA_SHA256, rcgen::RsaKeySize::_2048)
            }
            KeyAlgorithm::Rsa3072 => {
                KeyPair::generate_rsa_for(&rcgen::PKCS_RSA_SHA256, rcgen::RsaKeySize::_3072)
            }
            KeyAlgorithm::Rsa4096 => {
                KeyPair::generate_rsa_for(&rcgen::PKCS_RSA_SHA256, rcgen::RsaKeySize::_4096)
            }
        }
        .map_err(gen_err)
    }
}

impl fmt::Display for KeyAlgorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// What to do with a certificate signing request that asks for CA rights.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
#[non_exhaustive]
pub enum CsrCaRequestPolicy {
    /// Refuse the request with [`CsrError::RequestsCa`](crate::CsrError::RequestsCa) (the default).
    #[default]
    Reject,
    /// Issue anyway, as an end-entity certificate: the request gets none of what it asked for.
    Ignore,
}

/// How the CA issues: names, algorithms, lifetimes and rotation.
///
/// Load it from TOML/JSON with serde (every field has a default) and call
/// [`PkiConfig::validate`] once; every constructor of this crate that takes a config
/// validates it again.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct PkiConfig {
    /// Organisation (`O=`) written into every subject.
    pub organization: String,
    /// Common name of the server CA.
    pub ca_common_name: String,
    /// Common name of the mobile CA.
    pub mobile_ca_common_name: String,
    /// Key algorithm of the two CAs.
    pub ca_key_algorithm: KeyAlgorithm,
    /// Key algorithm of certificates issued with a fresh key.
    pub leaf_key_algorithm: KeyAlgorithm,
    /// Lifetime of a CA certificate, in days (1 to 36,500).
    pub ca_validity_days: u32,
    /// Lifetime of an issued certificate, in days (1 to 397).
    pub leaf_validity_days: u32,
    /// How far before "now" an issued certificate starts, in seconds (0 to 86,400), so that
    /// peers whose clocks run slightly behind accept it at once.
    pub backdate_secs: u32,
    /// How long a CRL is declared fresh (its nextUpdate), in days (1 to 365).
    pub crl_validity_days: u32,
    /// Make the reserve certificate this many days before expiry (product value: 90).
    pub reserve_before_days: u32,
    /// Switch to the reserve certificate this many days before expiry (product value: 1).
    pub switch_before_days: u32,
    /// What to do with a CSR that asks for CA rights.
    pub csr_ca_request: CsrCaRequestPolicy,
}

impl Default for PkiConfig {
    fn default() -> Self {
        Self {
            organization: "outpost".to_owned(),
            ca_common_name: "outpost Administration Server CA".to_owned(),
            mobile_ca_common_name: "outpost Administration Server mobile CA".to_owned(),
            ca_key_algorithm: KeyAlgorithm::EcdsaP256,
            leaf_key_algorithm: KeyAlgorithm::EcdsaP256,
            ca_validity_days: 3650,
            leaf_validity_days: MAX_LEAF_VALIDITY_DAYS,
            backdate_secs: 300,
            crl_validity_days: 7,
            reserve_before_days: 90,
            switch_before_days: 1,
            csr_ca_request: CsrCaRequestPolicy::Reject,
        }
    }
}

impl PkiConfig {
    /// Checks every field.
    ///
    /// # Errors
    /// [`InputError::InvalidConfig`] naming the first field that is out of range and its value,
    /// or [`InputError::InvalidConfigName`] for a name that cannot go into a certificate.
    pub fn validate(&self) -> Result<()> {
        fn range(field: &'static str, v: u32, lo: u32, hi: u32) -> Result<()> {
            if v < lo || v > hi {
                return Err(PkiError::Input(InputError::InvalidConfig {
                    field,
                    value: v.to_string(),
                    reason: format!("is outside {lo}..={hi}"),
                }));
            }
            Ok(())
        }
        for (field, v) in [
            ("organization", &self.organization),
            ("ca_common_name", &self.ca_common_name),
            ("mobile_ca_common_name", &self.mobile_ca_common_name),
        ] {
            crate::names::validate_identity("name", v)
                .map_err(|source| InputError::InvalidConfigName { field, source })?;
        }
        if self.ca_common_name == self.mobile_ca_common_name {
            return Err(PkiError::Input(InputError::InvalidConfig {
                field: "mobile_ca_common_name",
                value: format!("{:?}", self.mobile_ca_common_name),
                reason: "is also the server CA's name; the two CAs need distinct names".to_owned(),
            }));
        }
        range("ca_validity_days", self.ca_validity_days, 1, 36_500)?;
        range(
            "leaf_validity_days",
            self.leaf_validity_days,
            1,
            MAX_LEAF_VALIDITY_DAYS,
        )?;
        range("backdate_secs", self.backdate_secs, 0, 86_400)?;
        range("crl_validity_days", self.crl_validity_days, 1, 365)?;
        range(
            "reserve_before_days",
            self.reserve_before_days,
            1,
            self.leaf_validity_days.saturating_sub(1).max(1),
        )?;
        range(
            "switch_before_days",
            self.switch_before_days,
            0,
            self.reserve_before_days.saturating_sub(1),
        )?;
        Ok(())
    }

    pub(crate) fn leaf_validity(&self) -> Duration {
        DAY * self.leaf_validity_days
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_is_valid_and_names_round_trip() {
        PkiConfig::default().validate().unwrap();
        for a in KeyAlgorithm::ALL {
            assert_eq!(KeyAlgorithm::from_name(a.name()).unwrap(), a);
        }
        assert!(matches!(
            KeyAlgorithm::from_name("dsa1024"),
            Err(PkiError::Key(KeyError::UnsupportedAlgorithm { name })) if name == "dsa1024"
        ));
    }

    #[test]
    fn validation_names_the_field() {
        let cases: Vec<(PkiConfig, &str)> = vec![
            (
                PkiConfig {
                    leaf_validity_days: 398,
                    ..PkiConfig::default()
                },
                "leaf_validity_days",
            ),
            (
                PkiConfig {
                    leaf_validity_days: 0,
                    ..PkiConfig::default()
                },
                "leaf_validity_days",
            ),
            (
                PkiConfig {
                    switch_before_days: 90,
                    ..PkiConfig::default()
                },
                "switch_before_days",
            ),
            (
                PkiConfig {
                    reserve_before_days: 397,
                    ..PkiConfig::default()
                },
                "reserve_before_days",
            ),
            (
                PkiConfig {
                    organization: String::new(),
                    ..PkiConfig::default()
                },
                "organization",
            ),
            (
                PkiConfig {
                    mobile_ca_common_name: PkiConfig::default().ca_common_name,
                    ..PkiConfig::default()
                },
                "mobile_ca_common_name",
            ),
        ];
        for (cfg, want) in cases {
            match cfg.validate() {
                Err(PkiError::Input(
                    InputError::InvalidConfig { field, .. }
                    | InputError::InvalidConfigName { field, .. },
                )) => assert_eq!(field, want),
                other => panic!("expected error on {want}, got {other:?}"),
            }
        }
    }
}
