//! OpenMLS's storage provider over the encrypted database.
//!
//! Every entity OpenMLS stores is kept in one table, `mls_kv (label, key, value)`.
//! Keys are serialized with serde_json, as OpenMLS's own providers do. Values are
//! written in postcard's binary encoding behind a marker byte ([`BINARY`]); values
//! written before it (JSON, which never starts with that byte) are still read.
//! Binary matters at size: a group's message secrets keep the member list of each
//! past epoch, and with X-Wing keys JSON made them ~3.5 times larger and slower to
//! write, on every message sent or received. The join configuration stays JSON (its
//! deletion policy is read with serde's `deserialize_any`, which postcard cannot
//! do). Lists (own leaf nodes, proposal references) are lists of encoded items.
//! Large values are stored in chunks ([`crate::chunks`]). The layout follows
//! `openmls_memory_storage` so that its semantics carry over method by method.
//! Contract: `Ok(None)` (or an empty list) means absent; `Err` means the store
//! failed; a delete is irrevocable (`secure_delete` overwrites the freed bytes).

use openmls_traits::storage::{CURRENT_VERSION, StorageProvider, traits};
use serde::Serialize;

use crate::{Store, StoreError};

const CONFIRMATION_TAG: &str = "confirmation_tag";
const ENCRYPTION_KEY_PAIR: &str = "encryption_key_pair";
const EPOCH_KEY_PAIRS: &str = "epoch_key_pairs";
const GROUP_CONTEXT: &str = "group_context";
const GROUP_EPOCH_SECRETS: &str = "group_epoch_secrets";
const GROUP_STATE: &str = "group_state";
const INTERIM_TRANSCRIPT_HASH: &str = "interim_transcript_hash";
const JOIN_CONFIG: &str = "join_config";
const KEY_PACKAGE: &str = "key_package";
const MESSAGE_SECRETS: &str = "message_secrets";
const OWN_LEAF_INDEX: &str = "own_leaf_index";
const OWN_LEAF_NODES: &str = "own_leaf_nodes";
const PROPOSAL_REFS: &str = "proposal_refs";
const PSK: &str = "psk";
const QUEUED_PROPOSAL: &str = "queued_proposal";
const RESUMPTION_PSK_STORE: &str = "resumption_psk_store";
const SIGNATURE_KEY_PAIR: &str = "signature_key_pair";
const TREE: &str = "tree";

/// First byte of a value in the binary encoding. JSON text starts with `{`, `[`,
/// `"`, a digit, `-`, `t`, `f`, `n` or white space, never with this byte.
const BINARY: u8 = 0xB1;

fn key<K: Serialize + ?Sized>(key: &K) -> Result<Vec<u8>, StoreError> {
    Ok(serde_json::to_vec(key)?)
}

/// A value in the binary encoding: [`BINARY`], then postcard.
fn encode<V: Serialize + ?Sized>(value: &V) -> Result<Vec<u8>, StoreError> {
    Ok(postcard::to_extend(value, vec![BINARY])?)
}

/// Reads a value in either encoding; trailing bytes are an error.
fn decode<V: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<V, StoreError> {
    match bytes.split_first() {
        Some((&BINARY, rest)) => match postcard::take_from_bytes(rest)? {
            (value, []) => Ok(value),
            _ => Err(postcard::Error::DeserializeBadEncoding.into()),
        },
        _ => Ok(serde_json::from_slice(bytes)?),
    }
}

/// How a label's values are written.
fn encode_for<V: Serialize + ?Sized>(label: &str, value: &V) -> Result<Vec<u8>, StoreError> {
    if label == JOIN_CONFIG {
        Ok(serde_json::to_vec(value)?)
    } else {
        encode(value)
    }
}

impl Store {
    fn write<V: Serialize + ?Sized>(
        &self,
        label: &str,
        key: &[u8],
        value: &V,
    ) -> Result<(), StoreError> {
        self.put_value(label, key, encode_for(label, value)?)
    }

    fn read<V: serde::de::DeserializeOwned>(
        &self,
        label: &str,
        key: &[u8],
    ) -> Result<Option<V>, StoreError> {
        self.get_value(label, key)?.map(|v| decode(&v)).transpose()
    }

    fn list_raw(&self, label: &str, key: &[u8]) -> Result<Vec<Vec<u8>>, StoreError> {
        Ok(self.read(label, key)?.unwrap_or_default())
    }

    fn list_push<V: Serialize + ?Sized>(
        &self,
        label: &str,
        key: &[u8],
        item: &V,
    ) -> Result<(), StoreError> {
        let mut list = self.list_raw(label, key)?;
        list.push(encode(item)?);
        self.write(label, key, &list)
    }

    fn list_remove<V: Serialize + ?Sized>(
        &self,
        label: &str,
        key: &[u8],
        item: &V,
    ) -> Result<(), StoreError> {
        // An item written before the binary encoding is still JSON.
        let (binary, json) = (encode(item)?, serde_json::to_vec(item)?);
        let mut list = self.list_raw(label, key)?;
        if let Some(pos) = list
            .iter()
            .position(|stored| stored == &binary || stored == &json)
        {
            list.remove(pos);
        }
        self.write(label, key, &list)
    }

    fn list_read<V: serde::de::DeserializeOwned>(
        &self,
        label: &str,
        key: &[u8],
    ) -> Result<Vec<V>, StoreError> {
        self.list_raw(label, key)?
            .iter()
            .map(|bytes| decode(bytes))
            .collect()
    }
}

impl StorageProvider<CURRENT_VERSION> for Store {
    type Error = StoreError;

    fn write_mls_join_config<
        GroupId: traits::GroupId<CURRENT_VERSION>,
        MlsGroupJoinConfig: traits::MlsGroupJoinConfig<CURRENT_VERSION>,
    >(
        &self,
        group_id: &GroupId,
        config: &MlsGroupJoinConfig,
    ) -> Result<(), Self::Error> {
        self.write(JOIN_CONFIG, &key(group_id)?, config)
    }

    fn append_own_leaf_node<
        GroupId: traits::GroupId<CURRENT_VERSION>,
        LeafNode: traits::LeafNode<CURRENT_VERSION>,
    >(
        &self,
        group_id: &GroupId,
        leaf_node: &LeafNode,
    ) -> Result<(), Self::Error> {
        self.list_push(OWN_LEAF_NODES, &key(group_id)?, leaf_node)
    }

    fn queue_proposal<
        GroupId: traits::GroupId<CURRENT_VERSION>,
        ProposalRef: traits::ProposalRef<CURRENT_VERSION>,
        QueuedProposal: traits::QueuedProposal<CURRENT_VERSION>,
    >(
        &self,
        group_id: &GroupId,
        proposal_ref: &ProposalRef,
        proposal: &QueuedProposal,
    ) -> Result<(), Self::Error> {
        self.write(QUEUED_PROPOSAL, &key(&(group_id, proposal_ref))?, proposal)?;
        self.list_push(PROPOSAL_REFS, &key(group_id)?, proposal_ref)
    }

    fn write_tree<
        GroupId: traits::GroupId<CURRENT_VERSION>,
        TreeSync: traits::TreeSync<CURRENT_VERSION>,
    >(
        &self,
        group_id: &GroupId,
        tree: &TreeSync,
    ) -> Result<(), Self::Error> {
        self.write(TREE, &key(group_id)?, tree)
    }

    fn write_interim_transcript_hash<
        GroupId: traits::GroupId<CURRENT_VERSION>,
        InterimTranscriptHash: traits::InterimTranscriptHash<CURRENT_VERSION>,
    >(
        &self,
        group_id: &GroupId,
        interim_transcript_hash: &InterimTranscriptHash,
    ) -> Result<(), Self::Error> {
        self.write(
            INTERIM_TRANSCRIPT_HASH,
            &key(group_id)?,
            interim_transcript_hash,
        )
    }

    fn write_context<
        GroupId: traits::GroupId<CURRENT_VERSION>,
        GroupContext: traits::GroupContext<CURRENT_VERSION>,
    >(
        &self,
        group_id: &GroupId,
        group_context: &GroupContext,
    ) -> Result<(), Self::Error> {
        self.write(GROUP_CONTEXT, &key(group_id)?, group_context)
    }

    fn write_confirmation_tag<
        GroupId: traits::GroupId<CURRENT_VERSION>,
        ConfirmationTag: traits::ConfirmationTag<CURRENT_VERSION>,
    >(
        &self,
        group_id: &GroupId,
        confirmation_tag: &ConfirmationTag,
    ) -> Result<(), Self::Error> {
        self.write(CONFIRMATION_TAG, &key(group_id)?, confirmation_tag)
    }

    fn write_group_state<
        GroupState: traits::GroupState<CURRENT_VERSION>,
        GroupId: traits::GroupId<CURRENT_VERSION>,
    >(
        &self,
        group_id: &GroupId,
        group_state: &GroupState,
    ) -> Result<(), Self::Error> {
        self.write(GROUP_STATE, &key(group_id)?, group_state)
    }

    fn write_message_secrets<
        GroupId: traits::GroupId<CURRENT_VERSION>,
        MessageSecrets: traits::MessageSecrets<CURRENT_VERSION>,
    >(
        &self,
        group_id: &GroupId,
        message_secrets: &MessageSecrets,
    ) -> Result<(), Self::Error> {
        self.write(MESSAGE_SECRETS, &key(group_id)?, message_secrets)
    }

    fn write_resumption_psk_store<
        GroupId: traits::GroupId<CURRENT_VERSION>,
        ResumptionPskStore: traits::ResumptionPskStore<CURRENT_VERSION>,
    >(
        &self,
        group_id: &GroupId,
        resumption_psk_store: &ResumptionPskStore,
    ) -> Result<(), Self::Error> {
        self.write(RESUMPTION_PSK_STORE, &key(group_id)?, resumption_psk_store)
    }

    fn write_own_leaf_index<
        GroupId: traits::GroupId<CURRENT_VERSION>,
        LeafNodeIndex: traits::LeafNodeIndex<CURRENT_VERSION>,
    >(
        &self,
        group_id: &GroupId,
        own_leaf_index: &LeafNodeIndex,
    ) -> Result<(), Self::Error> {
        self.write(OWN_LEAF_INDEX, &key(group_id)?, own_leaf_index)
    }

    fn write_group_epoch_secrets<
        GroupId: traits::GroupId<CURRENT_VERSION>,
        GroupEpochSecrets: traits::GroupEpochSecrets<CURRENT_VERSION>,
    >(
        &self,
        group_id: &GroupId,
        group_epoch_secrets: &GroupEpochSecrets,
    ) -> Result<(), Self::Error> {
        self.write(GROUP_EPOCH_SECRETS, &key(group_id)?, group_epoch_secrets)
    }

    fn write_signature_key_pair<
        SignaturePublicKey: traits::SignaturePublicKey<CURRENT_VERSION>,
        SignatureKeyPair: traits::SignatureKeyPair<CURRENT_VERSION>,
    >(
        &self,
        public_key: &SignaturePublicKey,
        signature_key_pair: &SignatureKeyPair,
    ) -> Result<(), Self::Error> {
        self.write(SIGNATURE_KEY_PAIR, &key(public_key)?, signature_key_pair)
    }

    fn write_encryption_key_pair<
        EncryptionKey: traits::EncryptionKey<CURRENT_VERSION>,
        HpkeKeyPair: traits::HpkeKeyPair<CURRENT_VERSION>,
    >(
        &self,
        public_key: &EncryptionKey,
        key_pair: &HpkeKeyPair,
    ) -> Result<(), Self::Error> {
        self.write(ENCRYPTION_KEY_PAIR, &key(public_key)?, key_pair)
    }

    fn write_encryption_epoch_key_pairs<
        GroupId: traits::GroupId<CURRENT_VERSION>,
        EpochKey: traits::EpochKey<CURRENT_VERSION>,
        HpkeKeyPair: traits::HpkeKeyPair<CURRENT_VERSION>,
    >(
        &self,
        group_id: &GroupId,
        epoch: &EpochKey,
        leaf_index: u32,
        key_pairs: &[HpkeKeyPair],
    ) -> Result<(), Self::Error> {
        self.write(
            EPOCH_KEY_PAIRS,
            &key(&(group_id, epoch, leaf_index))?,
            &key_pairs,
        )
    }

    fn write_key_package<
        HashReference: traits::HashReference<CURRENT_VERSION>,
        KeyPackage: traits::KeyPackage<CURRENT_VERSION>,
    >(
        &self,
        hash_ref: &HashReference,
        key_package: &KeyPackage,
    ) -> Result<(), Self::Error> {
        self.write(KEY_PACKAGE, &key(hash_ref)?, key_package)
    }

    fn write_psk<
        PskId: traits::PskId<CURRENT_VERSION>,
        PskBundle: traits::PskBundle<CURRENT_VERSION>,
    >(
        &self,
        psk_id: &PskId,
        psk: &PskBundle,
    ) -> Result<(), Self::Error> {
        self.write(PSK, &key(psk_id)?, psk)
    }

    fn mls_group_join_config<
        GroupId: traits::GroupId<CURRENT_VERSION>,
        MlsGroupJoinConfig: traits::MlsGroupJoinConfig<CURRENT_VERSION>,
    >(
        &self,
        group_id: &GroupId,
    ) -> Result<Option<MlsGroupJoinConfig>, Self::Error> {
        self.read(JOIN_CONFIG, &key(group_id)?)
    }

    fn own_leaf_nodes<
        GroupId: traits::GroupId<CURRENT_VERSION>,
        LeafNode: traits::LeafNode<CURRENT_VERSION>,
    >(
        &self,
        group_id: &GroupId,
    ) -> Result<Vec<LeafNode>, Self::Error> {
        self.list_read(OWN_LEAF_NODES, &key(group_id)?)
    }

    fn queued_proposal_refs<
        GroupId: traits::GroupId<CURRENT_VERSION>,
        ProposalRef: traits::ProposalRef<CURRENT_VERSION>,
    >(
        &self,
        group_id: &GroupId,
    ) -> Result<Vec<ProposalRef>, Self::Error> {
        self.list_read(PROPOSAL_REFS, &key(group_id)?)
    }

    fn queued_proposals<
        GroupId: traits::GroupId<CURRENT_VERSION>,
        ProposalRef: traits::ProposalRef<CURRENT_VERSION>,
        QueuedProposal: traits::QueuedProposal<CURRENT_VERSION>,
    >(
        &self,
        group_id: &GroupId,
    ) -> Result<Vec<(ProposalRef, QueuedProposal)>, Self::Error> {
        let refs: Vec<ProposalRef> = self.list_read(PROPOSAL_REFS, &key(group_id)?)?;
        let mut out = Vec::with_capacity(refs.len());
        for proposal_ref in refs {
            let proposal = self
                .read(QUEUED_PROPOSAL, &key(&(group_id, &proposal_ref))?)?
                .ok_or(StoreError::Missing("queued proposal"))?;
            out.push((proposal_ref, proposal));
        }
        Ok(out)
    }

    fn tree<
        GroupId: traits::GroupId<CURRENT_VERSION>,
        TreeSync: traits::TreeSync<CURRENT_VERSION>,
    >(
        &self,
        group_id: &GroupId,
    ) -> Result<Option<TreeSync>, Self::Error> {
        self.read(TREE, &key(group_id)?)
    }

    fn group_context<
        GroupId: traits::GroupId<CURRENT_VERSION>,
        GroupContext: traits::GroupContext<CURRENT_VERSION>,
    >(
        &self,
        group_id: &GroupId,
    ) -> Result<Option<GroupContext>, Self::Error> {
        self.read(GROUP_CONTEXT, &key(group_id)?)
    }

    fn interim_transcript_hash<
        GroupId: traits::GroupId<CURRENT_VERSION>,
        InterimTranscriptHash: traits::InterimTranscriptHash<CURRENT_VERSION>,
    >(
        &self,
        group_id: &GroupId,
    ) -> Result<Option<InterimTranscriptHash>, Self::Error> {
        self.read(INTERIM_TRANSCRIPT_HASH, &key(group_id)?)
    }

    fn confirmation_tag<
        GroupId: traits::GroupId<CURRENT_VERSION>,
        ConfirmationTag: traits::ConfirmationTag<CURRENT_VERSION>,
    >(
        &self,
        group_id: &GroupId,
    ) -> Result<Option<ConfirmationTag>, Self::Error> {
        self.read(CONFIRMATION_TAG, &key(group_id)?)
    }

    fn group_state<
        GroupState: traits::GroupState<CURRENT_VERSION>,
        GroupId: traits::GroupId<CURRENT_VERSION>,
    >(
        &self,
        group_id: &GroupId,
    ) -> Result<Option<GroupState>, Self::Error> {
        self.read(GROUP_STATE, &key(group_id)?)
    }

    fn message_secrets<
        GroupId: traits::GroupId<CURRENT_VERSION>,
        MessageSecrets: traits::MessageSecrets<CURRENT_VERSION>,
    >(
        &self,
        group_id: &GroupId,
    ) -> Result<Option<MessageSecrets>, Self::Error> {
        self.read(MESSAGE_SECRETS, &key(group_id)?)
    }

    fn resumption_psk_store<
        GroupId: traits::GroupId<CURRENT_VERSION>,
        ResumptionPskStore: traits::ResumptionPskStore<CURRENT_VERSION>,
    >(
        &self,
        group_id: &GroupId,
    ) -> Result<Option<ResumptionPskStore>, Self::Error> {
        self.read(RESUMPTION_PSK_STORE, &key(group_id)?)
    }

    fn own_leaf_index<
        GroupId: traits::GroupId<CURRENT_VERSION>,
        LeafNodeIndex: traits::LeafNodeIndex<CURRENT_VERSION>,
    >(
        &self,
        group_id: &GroupId,
    ) -> Result<Option<LeafNodeIndex>, Self::Error> {
        self.read(OWN_LEAF_INDEX, &key(group_id)?)
    }

    fn group_epoch_secrets<
        GroupId: traits::GroupId<CURRENT_VERSION>,
        GroupEpochSecrets: traits::GroupEpochSecrets<CURRENT_VERSION>,
    >(
        &self,
        group_id: &GroupId,
    ) -> Result<Option<GroupEpochSecrets>, Self::Error> {
        self.read(GROUP_EPOCH_SECRETS, &key(group_id)?)
    }

    fn signature_key_pair<
        SignaturePublicKey: traits::SignaturePublicKey<CURRENT_VERSION>,
        SignatureKeyPair: traits::SignatureKeyPair<CURRENT_VERSION>,
    >(
        &self,
        public_key: &SignaturePublicKey,
    ) -> Result<Option<SignatureKeyPair>, Self::Error> {
        self.read(SIGNATURE_KEY_PAIR, &key(public_key)?)
    }

    fn encryption_key_pair<
        HpkeKeyPair: traits::HpkeKeyPair<CURRENT_VERSION>,
        EncryptionKey: traits::EncryptionKey<CURRENT_VERSION>,
    >(
        &self,
        public_key: &EncryptionKey,
    ) -> Result<Option<HpkeKeyPair>, Self::Error> {
        self.read(ENCRYPTION_KEY_PAIR, &key(public_key)?)
    }

    fn encryption_epoch_key_pairs<
        GroupId: traits::GroupId<CURRENT_VERSION>,
        EpochKey: traits::EpochKey<CURRENT_VERSION>,
        HpkeKeyPair: traits::HpkeKeyPair<CURRENT_VERSION>,
    >(
        &self,
        group_id: &GroupId,
        epoch: &EpochKey,
        leaf_index: u32,
    ) -> Result<Vec<HpkeKeyPair>, Self::Error> {
        Ok(self
            .read(EPOCH_KEY_PAIRS, &key(&(group_id, epoch, leaf_index))?)?
            .unwrap_or_default())
    }

    fn key_package<
        KeyPackageRef: traits::HashReference<CURRENT_VERSION>,
        KeyPackage: traits::KeyPackage<CURRENT_VERSION>,
    >(
        &self,
        hash_ref: &KeyPackageRef,
    ) -> Result<Option<KeyPackage>, Self::Error> {
        self.read(KEY_PACKAGE, &key(hash_ref)?)
    }

    fn psk<PskBundle: traits::PskBundle<CURRENT_VERSION>, PskId: traits::PskId<CURRENT_VERSION>>(
        &self,
        psk_id: &PskId,
    ) -> Result<Option<PskBundle>, Self::Error> {
        self.read(PSK, &key(psk_id)?)
    }

    fn remove_proposal<
        GroupId: traits::GroupId<CURRENT_VERSION>,
        ProposalRef: traits::ProposalRef<CURRENT_VERSION>,
    >(
        &self,
        group_id: &GroupId,
        proposal_ref: &ProposalRef,
    ) -> Result<(), Self::Error> {
        self.list_remove(PROPOSAL_REFS, &key(group_id)?, proposal_ref)?;
        self.delete_value(QUEUED_PROPOSAL, &key(&(group_id, proposal_ref))?)
    }

    fn delete_own_leaf_nodes<GroupId: traits::GroupId<CURRENT_VERSION>>(
        &self,
        group_id: &GroupId,
    ) -> Result<(), Self::Error> {
        self.delete_value(OWN_LEAF_NODES, &key(group_id)?)
    }

    fn delete_group_config<GroupId: traits::GroupId<CURRENT_VERSION>>(
        &self,
        group_id: &GroupId,
    ) -> Result<(), Self::Error> {
        self.delete_value(JOIN_CONFIG, &key(group_id)?)
    }

    fn delete_tree<GroupId: traits::GroupId<CURRENT_VERSION>>(
        &self,
        group_id: &GroupId,
    ) -> Result<(), Self::Error> {
        self.delete_value(TREE, &key(group_id)?)
    }

    fn delete_confirmation_tag<GroupId: traits::GroupId<CURRENT_VERSION>>(
        &self,
        group_id: &GroupId,
    ) -> Result<(), Self::Error> {
        self.delete_value(CONFIRMATION_TAG, &key(group_id)?)
    }

    fn delete_group_state<GroupId: traits::GroupId<CURRENT_VERSION>>(
        &self,
        group_id: &GroupId,
    ) -> Result<(), Self::Error> {
        self.delete_value(GROUP_STATE, &key(group_id)?)
    }

    fn delete_context<GroupId: traits::GroupId<CURRENT_VERSION>>(
        &self,
        group_id: &GroupId,
    ) -> Result<(), Self::Error> {
        self.delete_value(GROUP_CONTEXT, &key(group_id)?)
    }

    fn delete_interim_transcript_hash<GroupId: traits::GroupId<CURRENT_VERSION>>(
        &self,
        group_id: &GroupId,
    ) -> Result<(), Self::Error> {
        self.delete_value(INTERIM_TRANSCRIPT_HASH, &key(group_id)?)
    }

    fn delete_message_secrets<GroupId: traits::GroupId<CURRENT_VERSION>>(
        &self,
        group_id: &GroupId,
    ) -> Result<(), Self::Error> {
        self.delete_value(MESSAGE_SECRETS, &key(group_id)?)
    }

    fn delete_all_resumption_psk_secrets<GroupId: traits::GroupId<CURRENT_VERSION>>(
        &self,
        group_id: &GroupId,
    ) -> Result<(), Self::Error> {
        self.delete_value(RESUMPTION_PSK_STORE, &key(group_id)?)
    }

    fn delete_own_leaf_index<GroupId: traits::GroupId<CURRENT_VERSION>>(
        &self,
        group_id: &GroupId,
    ) -> Result<(), Self::Error> {
        self.delete_value(OWN_LEAF_INDEX, &key(group_id)?)
    }

    fn delete_group_epoch_secrets<GroupId: traits::GroupId<CURRENT_VERSION>>(
        &self,
        group_id: &GroupId,
    ) -> Result<(), Self::Error> {
        self.delete_value(GROUP_EPOCH_SECRETS, &key(group_id)?)
    }

    fn clear_proposal_queue<
        GroupId: traits::GroupId<CURRENT_VERSION>,
        ProposalRef: traits::ProposalRef<CURRENT_VERSION>,
    >(
        &self,
        group_id: &GroupId,
    ) -> Result<(), Self::Error> {
        let refs: Vec<ProposalRef> = self.list_read(PROPOSAL_REFS, &key(group_id)?)?;
        for proposal_ref in refs {
            self.delete_value(QUEUED_PROPOSAL, &key(&(group_id, &proposal_ref))?)?;
        }
        self.delete_value(PROPOSAL_REFS, &key(group_id)?)
    }

    fn delete_signature_key_pair<
        SignaturePublicKey: traits::SignaturePublicKey<CURRENT_VERSION>,
    >(
        &self,
        public_key: &SignaturePublicKey,
    ) -> Result<(), Self::Error> {
        self.delete_value(SIGNATURE_KEY_PAIR, &key(public_key)?)
    }

    fn delete_encryption_key_pair<EncryptionKey: traits::EncryptionKey<CURRENT_VERSION>>(
        &self,
        public_key: &EncryptionKey,
    ) -> Result<(), Self::Error> {
        self.delete_value(ENCRYPTION_KEY_PAIR, &key(public_key)?)
    }

    fn delete_encryption_epoch_key_pairs<
        GroupId: traits::GroupId<CURRENT_VERSION>,
        EpochKey: traits::EpochKey<CURRENT_VERSION>,
    >(
        &self,
        group_id: &GroupId,
        epoch: &EpochKey,
        leaf_index: u32,
    ) -> Result<(), Self::Error> {
        self.delete_value(EPOCH_KEY_PAIRS, &key(&(group_id, epoch, leaf_index))?)
    }

    fn delete_key_package<KeyPackageRef: traits::HashReference<CURRENT_VERSION>>(
        &self,
        hash_ref: &KeyPackageRef,
    ) -> Result<(), Self::Error> {
        self.delete_value(KEY_PACKAGE, &key(hash_ref)?)
    }

    fn delete_psk<PskKey: traits::PskId<CURRENT_VERSION>>(
        &self,
        psk_id: &PskKey,
    ) -> Result<(), Self::Error> {
        self.delete_value(PSK, &key(psk_id)?)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use openmls::prelude::{GroupId, LeafNodeIndex, MlsGroupJoinConfig};
    use rusqlite::params;

    use super::*;

    fn store() -> (Store, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        (Store::create(dir.path(), b"mls storage").unwrap(), dir)
    }

    fn raw(store: &Store, label: &str, key: &[u8]) -> Vec<u8> {
        store
            .conn
            .query_row(
                "SELECT value FROM mls_kv WHERE label = ?1 AND key = ?2",
                params![label, key],
                |r| r.get(0),
            )
            .unwrap()
    }

    fn set_raw(store: &Store, label: &str, key: &[u8], value: &[u8]) {
        store
            .conn
            .execute(
                "UPDATE mls_kv SET value = ?3 WHERE label = ?1 AND key = ?2",
                params![label, key, value],
            )
            .unwrap();
    }

    #[test]
    fn values_are_written_binary_and_json_ones_are_still_read() {
        let (store, _dir) = store();
        let group = GroupId::from_slice(b"group");
        let k = key(&group).unwrap();
        store
            .write_own_leaf_index(&group, &LeafNodeIndex::new(300))
            .unwrap();
        // Known answer: the marker, then postcard's varint of 300.
        assert_eq!(raw(&store, OWN_LEAF_INDEX, &k), [BINARY, 0xAC, 0x02]);
        let read: Option<LeafNodeIndex> = store.own_leaf_index(&group).unwrap();
        assert_eq!(read, Some(LeafNodeIndex::new(300)));

        // A value an earlier version wrote as JSON.
        set_raw(&store, OWN_LEAF_INDEX, &k, b"301");
        let read: Option<LeafNodeIndex> = store.own_leaf_index(&group).unwrap();
        assert_eq!(read, Some(LeafNodeIndex::new(301)));
    }

    #[test]
    fn a_malformed_value_is_an_error_not_a_panic() {
        for bytes in [
            &[BINARY][..],
            &[BINARY, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF],
            &[BINARY, 0x05, 0x00], // a trailing byte
            b"{not json",
            b"",
        ] {
            assert!(decode::<u32>(bytes).is_err(), "{bytes:?}");
        }
        assert_eq!(decode::<u32>(&[BINARY, 0x05]).unwrap(), 5);
    }

    #[test]
    fn a_list_item_written_as_json_is_still_found_and_removed() {
        let (store, _dir) = store();
        let k = b"list".to_vec();
        store.list_push(PROPOSAL_REFS, &k, "new").unwrap();
        // The list as an earlier version wrote it: JSON around JSON items.
        let legacy: Vec<Vec<u8>> = vec![b"\"old\"".to_vec(), encode("new").unwrap()];
        set_raw(
            &store,
            PROPOSAL_REFS,
            &k,
            &serde_json::to_vec(&legacy).unwrap(),
        );
        let items: Vec<String> = store.list_read(PROPOSAL_REFS, &k).unwrap();
        assert_eq!(items, ["old", "new"]);
        store.list_remove(PROPOSAL_REFS, &k, "old").unwrap();
        store.list_push(PROPOSAL_REFS, &k, "newer").unwrap();
        let items: Vec<String> = store.list_read(PROPOSAL_REFS, &k).unwrap();
        assert_eq!(items, ["new", "newer"]);
        assert_eq!(raw(&store, PROPOSAL_REFS, &k).first(), Some(&BINARY));
    }

    #[test]
    fn the_join_configuration_stays_json_and_reads_back() {
        let (store, _dir) = store();
        let group = GroupId::from_slice(b"group");
        let config = MlsGroupJoinConfig::builder().max_past_epochs(4).build();
        store.write_mls_join_config(&group, &config).unwrap();
        assert_eq!(
            raw(&store, JOIN_CONFIG, &key(&group).unwrap()).first(),
            Some(&b'{')
        );
        let read: Option<MlsGroupJoinConfig> = store.mls_group_join_config(&group).unwrap();
        assert_eq!(
            serde_json::to_vec(&read.unwrap()).unwrap(),
            serde_json::to_vec(&config).unwrap()
        );
    }
}
