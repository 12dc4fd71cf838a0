//! Recomputes the chain and names the first bad record: edited (its hash no longer matches
//! its content), removed (a gap in the sequences), reordered (a record hashed for another
//! place), or, against a checkpoint, truncated or rewritten up to the checkpoint's head.

use super::chain::{AuditContent, GENESIS_HASH, record_hash};
use crate::entities::audit_record;
use sea_orm::{ColumnTrait, DatabaseConnection, EntityTrait, QueryFilter, QueryOrder, QuerySelect};

/// The head a trusted checkpoint vouches for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TrustedHead {
    pub sequence: u64,
    pub hash: Vec<u8>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Verification {
    pub ok: bool,
    pub records_checked: u64,
    pub first_bad_sequence: u64,
    pub problem: String,
}

/// The chain check as a fold over records in sequence order, so it needs no database to test.
#[derive(Debug)]
pub struct ChainCheck {
    expected: u64,
    prev_hash: Vec<u8>,
    checked: u64,
    checkpoint: Option<TrustedHead>,
    failure: Option<(u64, String)>,
}

impl ChainCheck {
    pub fn new(checkpoint: Option<TrustedHead>) -> Self {
        ChainCheck {
            expected: 1,
            prev_hash: GENESIS_HASH.to_vec(),
            checked: 0,
            checkpoint,
            failure: None,
        }
    }

    pub fn failed(&self) -> bool {
        self.failure.is_some()
    }

    /// Checks the next record; after the first failure, records are ignored.
    pub fn push(&mut self, row: &audit_record::Model) {
        if self.failure.is_some() {
            return;
        }
        self.checked += 1;
        let sequence = row.sequence as u64;
        if row.sequence < 1 || sequence != self.expected {
            self.failure = Some((
                self.expected,
                format!(
                    "record {} is missing (the next record is {})",
                    self.expected, row.sequence
                ),
            ));
            return;
        }
        let recomputed = record_hash(sequence, &self.prev_hash, &AuditContent::from_row(row));
        if recomputed.as_slice() != row.hash.as_slice() || row.prev_hash != self.prev_hash {
            self.failure = Some((
                sequence,
                format!("record {sequence} was altered or moved: its hash does not match"),
            ));
            return;
        }
        if let Some(cp) = &self.checkpoint
            && cp.sequence == sequence
            && cp.hash != row.hash
        {
            self.failure = Some((
                sequence,
                format!("record {sequence} does not match the checkpoint's hash"),
            ));
            return;
        }
        self.expected += 1;
        self.prev_hash = row.hash.clone();
    }

    pub fn finish(self) -> Verification {
        let mut failure = self.failure;
        let last = self.expected - 1;
        if failure.is_none()
            && let Some(cp) = &self.checkpoint
            && last < cp.sequence
        {
            failure = Some((
                last + 1,
                format!(
                    "the log ends at record {last} but the checkpoint covers {}: truncated",
                    cp.sequence
                ),
            ));
        }
        match failure {
            None => Verification {
                ok: true,
                records_checked: self.checked,
                first_bad_sequence: 0,
                problem: String::new(),
            },
            Some((sequence, problem)) => Verification {
                ok: false,
                records_checked: self.checked,
                first_bad_sequence: sequence,
                problem,
            },
        }
    }
}

const PAGE: u64 = 2_000;

/// Reads the whole log in sequence order, a page at a time.
pub async fn verify(
    db: &DatabaseConnection,
    checkpoint: Option<TrustedHead>,
) -> Result<Verification, sea_orm::DbErr> {
    let mut check = ChainCheck::new(checkpoint);
    let mut after = 0i64;
    loop {
        let rows = audit_record::Entity::find()
            .filter(audit_record::Column::Sequence.gt(after))
            .order_by_asc(audit_record::Column::Sequence)
            .limit(PAGE)
            .all(db)
            .await?;
        let Some(last) = rows.last() else { break };
        after = last.sequence;
        for row in &rows {
            check.push(row);
        }
        if check.failed() || (rows.len() as u64) < PAGE {
            break;
        }
    }
    Ok(check.finish())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chain(n: u64) -> Vec<audit_record::Model> {
        let mut prev = GENESIS_HASH;
        (1..=n)
            .map(|s| {
                let row = AuditContent {
                    recorded_at: s as i64,
                    user_id: format!("user{s}"),
                    ..Default::default()
                }
                .into_row(s, prev);
                prev.copy_from_slice(&row.hash);
                row
            })
            .collect()
    }

    fn run(rows: &[audit_record::Model], cp: Option<TrustedHead>) -> Verification {
        let mut check = ChainCheck::new(cp);
        for r in rows {
            check.push(r);
        }
        check.finish()
    }

    #[test]
    fn an_intact_chain_verifies() {
        let v = run(&chain(5), None);
        assert!(v.ok);
        assert_eq!(v.records_checked, 5);
        assert!(run(&[], None).ok);
    }

    #[test]
    fn an_edit_a_gap_and_a_swap_are_named_by_sequence() {
        let mut edited = chain(5);
        edited[2].user_id = "someone else".into();
        assert_eq!(run(&edited, None).first_bad_sequence, 3);

        let mut gap = chain(5);
        gap.remove(3);
        assert_eq!(run(&gap, None).first_bad_sequence, 4);

        let mut swapped = chain(5);
        let (a, b) = (swapped[1].clone(), swapped[2].clone());
        swapped[1] = audit_record::Model { sequence: 2, ..b };
        swapped[2] = audit_record::Model { sequence: 3, ..a };
        assert_eq!(run(&swapped, None).first_bad_sequence, 2);
    }

    #[test]
    fn a_checkpoint_catches_truncation_and_a_rewritten_head() {
        let rows = chain(5);
        let cp = TrustedHead {
            sequence: 5,
            hash: rows[4].hash.clone(),
        };
        assert!(run(&rows, Some(cp.clone())).ok);
        let v = run(&rows[..3], Some(cp.clone()));
        assert!(!v.ok);
        assert_eq!(v.first_bad_sequence, 4);
        let other = TrustedHead {
            sequence: 5,
            hash: vec![9; 32],
        };
        assert_eq!(run(&rows, Some(other)).first_bad_sequence, 5);
    }
}
