//! The hash of one audit record: SHA-256 over an unambiguous encoding of its sequence, the
//! previous record's hash and its content. Every variable-length field is length-prefixed, so
//! no two different records encode to the same bytes (`"ab" + "c"` is not `"a" + "bc"`).

use crate::entities::audit_record;
use aws_lc_rs::digest::{Context, SHA256};

/// The previous hash of record 1.
pub const GENESIS_HASH: [u8; 32] = [0; 32];

/// Domain separation: these bytes hash nothing but cpis audit records, version 1.
const DOMAIN: &[u8] = b"cpis.audit.v1";

/// Marks the user's name in a record's encoding (see [`record_hash`]).
const NAME_TAG: &[u8] = b"\x01name";

/// What a record says, apart from its place in the chain.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AuditContent {
    pub recorded_at: i64,
    pub user_id: String,
    pub role_code: String,
    pub ods_code: String,
    pub site_ods_code: String,
    pub nhs_number: String,
    pub action: String,
    pub access_kind: String,
    pub outcome: String,
    pub reason: String,
    pub request_id: String,
    pub trace_id: String,
    pub lookup_id: String,
    /// What a watch relayed (`DELIVERED` records only).
    pub delivery: Option<Delivery>,
    /// The user's display name; empty for a system.
    pub user_name: String,
}

/// A watch's delivered span: notifications `first..=last` of its LA, `count` of them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Delivery {
    pub first: u64,
    pub last: u64,
    pub count: u64,
}

impl AuditContent {
    pub fn from_row(row: &audit_record::Model) -> Self {
        AuditContent {
            recorded_at: row.recorded_at,
            user_id: row.user_id.clone(),
            role_code: row.role_code.clone(),
            ods_code: row.ods_code.clone(),
            site_ods_code: row.site_ods_code.clone(),
            nhs_number: row.nhs_number.clone(),
            action: row.action.clone(),
            access_kind: row.access_kind.clone(),
            outcome: row.outcome.clone(),
            reason: row.reason.clone(),
            request_id: row.request_id.clone(),
            trace_id: row.trace_id.clone(),
            lookup_id: row.lookup_id.clone(),
            user_name: row.user_name.clone(),
            delivery: (row.delivered_count > 0).then_some(Delivery {
                first: row.delivered_first as u64,
                last: row.delivered_last as u64,
                count: row.delivered_count as u64,
            }),
        }
    }

    /// The row to insert at `sequence` after `prev_hash`.
    pub fn into_row(self, sequence: u64, prev_hash: [u8; 32]) -> audit_record::Model {
        let hash = record_hash(sequence, &prev_hash, &self);
        let delivery = self.delivery.unwrap_or_default();
        audit_record::Model {
            sequence: sequence as i64,
            recorded_at: self.recorded_at,
            user_id: self.user_id,
            role_code: self.role_code,
            ods_code: self.ods_code,
            site_ods_code: self.site_ods_code,
            nhs_number: self.nhs_number,
            action: self.action,
            access_kind: self.access_kind,
            outcome: self.outcome,
            reason: self.reason,
            request_id: self.request_id,
            trace_id: self.trace_id,
            lookup_id: self.lookup_id,
            delivered_first: delivery.first as i64,
            delivered_last: delivery.last as i64,
            delivered_count: delivery.count as i64,
            user_name: self.user_name.clone(),
            prev_hash: prev_hash.to_vec(),
            hash: hash.to_vec(),
        }
    }
}

fn field(ctx: &mut Context, bytes: &[u8]) {
    // Fields are bounded by validation far below 4 GiB.
    ctx.update(&(bytes.len() as u32).to_be_bytes());
    ctx.update(bytes);
}

/// The canonical encoding of a record (what [`record_hash`] digests).
pub fn record_hash(sequence: u64, prev_hash: &[u8], content: &AuditContent) -> [u8; 32] {
    let mut ctx = Context::new(&SHA256);
    field(&mut ctx, DOMAIN);
    ctx.update(&sequence.to_be_bytes());
    field(&mut ctx, prev_hash);
    ctx.update(&content.recorded_at.to_be_bytes());
    for text in [
        &content.user_id,
        &content.role_code,
        &content.ods_code,
        &content.site_ods_code,
        &content.nhs_number,
        &content.action,
        &content.access_kind,
        &content.outcome,
        &content.reason,
        &content.request_id,
        &content.trace_id,
        &content.lookup_id,
    ] {
        field(&mut ctx, text.as_bytes());
    }
    // Only delivery records carry the span, after every other field: a record without one
    // hashes exactly as it did before deliveries were recorded, so old chains still verify,
    // and the fixed 24 bytes after the last length-prefixed field cannot be confused with it.
    if let Some(d) = &content.delivery {
        for n in [d.first, d.last, d.count] {
            ctx.update(&n.to_be_bytes());
        }
    }
    // Only records with a name carry it, last, behind a tag: a record without one hashes as
    // before names were recorded. The tag's first bytes (0x01 'n' 'a' 'm' 'e') cannot be the
    // start of a delivery span, whose first cursor would have to exceed 10^17.
    if !content.user_name.is_empty() {
        ctx.update(NAME_TAG);
        field(&mut ctx, content.user_name.as_bytes());
    }
    let digest = ctx.finish();
    let mut out = [0u8; 32];
    out.copy_from_slice(digest.as_ref());
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const OLD_HASH: &str = "18a0aa38f91bcd16e3908e7b8184c36123f7ac3f44537eed5312abaab58110a7";

    fn content(user: &str, role: &str) -> AuditContent {
        AuditContent {
            user_id: user.into(),
            role_code: role.into(),
            ..Default::default()
        }
    }

    #[test]
    fn a_record_without_a_delivery_hashes_as_before_deliveries_were_recorded() {
        // The v1 encoding as it stood before the delivery span existed, computed apart (with
        // Python's hashlib): every record already in a log must keep verifying.
        let hash = record_hash(7, &GENESIS_HASH, &content("dr.jones", "R8000"));
        let hex: String = hash.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(hex, OLD_HASH);
    }

    #[test]
    fn a_delivery_span_is_part_of_the_hash() {
        let plain = content("la.user", "");
        let with = |first, last, count| AuditContent {
            delivery: Some(Delivery { first, last, count }),
            ..plain.clone()
        };
        let h = |c: &AuditContent| record_hash(1, &GENESIS_HASH, c);
        assert_ne!(h(&plain), h(&with(1, 2, 2)));
        assert_ne!(h(&with(1, 2, 2)), h(&with(1, 3, 2)));
        assert_ne!(h(&with(1, 2, 2)), h(&with(2, 2, 1)));
    }

    #[test]
    fn a_users_name_is_part_of_the_hash_and_a_record_without_one_hashes_as_before() {
        // Computed apart, with Python's hashlib, from the encoding `record_hash` documents
        // (the same computation gives OLD_HASH for the record without a name).
        let named = AuditContent {
            user_name: "Dr Alex Jones".into(),
            ..content("dr.jones", "R8000")
        };
        let hex: String = record_hash(7, &GENESIS_HASH, &named)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        assert_eq!(
            hex,
            "1b5821a97e76e2dabd61676b4ac966b7d3ae79f2bd3aefbf19234785bb32411b"
        );
        let renamed = AuditContent {
            user_name: "Dr Alex Jonas".into(),
            ..named.clone()
        };
        assert_ne!(
            record_hash(7, &GENESIS_HASH, &named),
            record_hash(7, &GENESIS_HASH, &renamed)
        );
        // The name survives the row and back.
        let row = named.clone().into_row(7, GENESIS_HASH);
        assert_eq!(AuditContent::from_row(&row), named);
    }

    #[test]
    fn moving_bytes_between_fields_changes_the_hash() {
        let a = record_hash(1, &GENESIS_HASH, &content("ab", "c"));
        let b = record_hash(1, &GENESIS_HASH, &content("a", "bc"));
        assert_ne!(a, b);
    }

    #[test]
    fn the_sequence_and_the_previous_hash_are_covered() {
        let c = content("u", "r");
        let base = record_hash(1, &GENESIS_HASH, &c);
        assert_ne!(base, record_hash(2, &GENESIS_HASH, &c));
        assert_ne!(base, record_hash(1, &[1u8; 32], &c));
    }

    proptest! {
        #[test]
        fn any_edit_to_a_text_field_changes_the_hash(
            user in ".{0,12}", other in ".{0,12}", which in 0usize..3,
        ) {
            prop_assume!(user != other);
            let mut a = AuditContent::default();
            let mut b = AuditContent::default();
            match which {
                0 => { a.user_id = user; b.user_id = other; }
                1 => { a.nhs_number = user; b.nhs_number = other; }
                _ => { a.reason = user; b.reason = other; }
            }
            prop_assert_ne!(record_hash(7, &GENESIS_HASH, &a), record_hash(7, &GENESIS_HASH, &b));
        }
    }
}
