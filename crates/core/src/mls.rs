//! How Backchannel configures OpenMLS: ciphersuites, the provider, group and
//! join configurations, capabilities and the extensions we carry.
//!
//! The engine and the IETF test-vector tests both take their configuration from
//! here, so the vectors exercise what the engine runs.

use backchannel_proto::member::{CHANNEL_POLICY_EXTENSION, MEMBER_INFO_EXTENSION};
use openmls::prelude::*;
use openmls::treesync::errors::LeafNodeValidationError;
use openmls_libcrux_crypto::CryptoProvider;
use openmls_traits::OpenMlsProvider;
use openmls_traits::storage::{CURRENT_VERSION, StorageProvider};

/// Past epochs whose secrets are kept, so that late messages still decrypt.
pub const MAX_PAST_EPOCHS: usize = 4;

/// How far behind the newest message of a sender a late message may be.
pub const OUT_OF_ORDER_TOLERANCE: u32 = 1000;

/// How far ahead of the last message of a sender a message may be.
pub const MAXIMUM_FORWARD_DISTANCE: u32 = 10_000;

/// Resumption PSKs kept per group (RFC 9420 section 8.6).
pub const NUMBER_OF_RESUMPTION_PSKS: usize = 16;

/// A channel's MLS ciphersuite.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Suite {
    /// `0x004D` MLS_256_XWING_CHACHA20POLY1305_SHA256_Ed25519: ML-KEM-768 + X25519,
    /// post-quantum confidentiality. The default.
    XWing,
    /// `0x0003` MLS_128_DHKEMX25519_CHACHA20POLY1305_SHA256_Ed25519: classical, for
    /// interoperability.
    Classic,
}

impl Suite {
    /// Every suite, the default first.
    pub const ALL: [Suite; 2] = [Suite::XWing, Suite::Classic];

    /// The OpenMLS ciphersuite.
    pub fn ciphersuite(self) -> Ciphersuite {
        match self {
            Suite::XWing => Ciphersuite::MLS_256_XWING_CHACHA20POLY1305_SHA256_Ed25519,
            Suite::Classic => Ciphersuite::MLS_128_DHKEMX25519_CHACHA20POLY1305_SHA256_Ed25519,
        }
    }

    /// The IANA code point.
    pub fn code(self) -> u16 {
        self.ciphersuite() as u16
    }

    /// The suite with this code point, if we support it.
    pub fn from_code(code: u16) -> Option<Self> {
        Self::ALL.into_iter().find(|s| s.code() == code)
    }

    /// A short name for people: `xwing` or `classic`.
    pub fn name(self) -> &'static str {
        match self {
            Suite::XWing => "xwing",
            Suite::Classic => "classic",
        }
    }
}

impl std::str::FromStr for Suite {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "xwing" | "x-wing" | "0x004d" | "77" => Ok(Suite::XWing),
            "classic" | "0x0003" | "3" => Ok(Suite::Classic),
            _ => Err(format!("unknown ciphersuite '{s}': use xwing or classic")),
        }
    }
}

/// The OpenMLS provider: libcrux for cryptography and randomness, and a storage
/// provider supplied by the caller.
pub struct Backend<S> {
    crypto: CryptoProvider,
    storage: S,
}

impl<S> Backend<S> {
    /// Wraps a storage provider. Fails only if libcrux cannot initialise its
    /// random number generator.
    pub fn new(storage: S) -> Result<Self, CryptoError> {
        Ok(Self {
            crypto: CryptoProvider::new()?,
            storage,
        })
    }

    /// The storage provider.
    pub fn store(&self) -> &S {
        &self.storage
    }
}

impl<S: StorageProvider<CURRENT_VERSION>> OpenMlsProvider for Backend<S> {
    type CryptoProvider = CryptoProvider;
    type RandProvider = CryptoProvider;
    type StorageProvider = S;

    fn storage(&self) -> &Self::StorageProvider {
        &self.storage
    }

    fn crypto(&self) -> &Self::CryptoProvider {
        &self.crypto
    }

    fn rand(&self) -> &Self::RandProvider {
        &self.crypto
    }
}

/// The extension types every Backchannel leaf supports.
pub(crate) fn extension_types() -> [ExtensionType; 2] {
    [
        ExtensionType::Unknown(MEMBER_INFO_EXTENSION),
        ExtensionType::Unknown(CHANNEL_POLICY_EXTENSION),
    ]
}

/// Leaf capabilities: our extensions, basic credentials, the suite in use.
pub(crate) fn capabilities(suite: Suite) -> Capabilities {
    Capabilities::new(
        None,
        Some(&[suite.ciphersuite()]),
        Some(&extension_types()),
        None,
        Some(&[CredentialType::Basic]),
    )
}

/// The join configuration every member uses.
pub fn join_config() -> MlsGroupJoinConfig {
    join_config_builder()
        .wire_format_policy(PURE_CIPHERTEXT_WIRE_FORMAT_POLICY)
        .build()
}

/// Everything of [`join_config`] but the wire-format policy, which the IETF test
/// vectors must relax (their commits are plaintext `PublicMessage`s, which
/// Backchannel never sends nor accepts).
pub fn join_config_builder() -> MlsGroupJoinConfigBuilder {
    MlsGroupJoinConfig::builder()
        .use_ratchet_tree_extension(true)
        .max_past_epochs(MAX_PAST_EPOCHS)
        .number_of_resumption_psks(NUMBER_OF_RESUMPTION_PSKS)
        .sender_ratchet_configuration(SenderRatchetConfiguration::new(
            OUT_OF_ORDER_TOLERANCE,
            MAXIMUM_FORWARD_DISTANCE,
        ))
}

/// The creation configuration of a new channel.
pub(crate) fn create_config(
    suite: Suite,
    leaf_extensions: Extensions<LeafNode>,
    group_extensions: Extensions<GroupContext>,
) -> Result<MlsGroupCreateConfig, LeafNodeValidationError> {
    Ok(MlsGroupCreateConfig::builder()
        .ciphersuite(suite.ciphersuite())
        .wire_format_policy(PURE_CIPHERTEXT_WIRE_FORMAT_POLICY)
        .use_ratchet_tree_extension(true)
        .max_past_epochs(MAX_PAST_EPOCHS)
        .number_of_resumption_psks(NUMBER_OF_RESUMPTION_PSKS)
        .sender_ratchet_configuration(SenderRatchetConfiguration::new(
            OUT_OF_ORDER_TOLERANCE,
            MAXIMUM_FORWARD_DISTANCE,
        ))
        .capabilities(capabilities(suite))
        .with_group_context_extensions(group_extensions)
        .with_leaf_node_extensions(leaf_extensions)?
        .build())
}
