//! The per-number answer cache: the flag rows held on an NHS number (the empty answer too,
//! since nearly every child looked up has none). Visibility is computed from the rows at each
//! instant, so an entry does not depend on when it is read.
//!
//! Read-your-writes (ARCHITECTURE.md rule 2) rests on a per-number generation: a writer, after
//! its commit, bumps the generation of every number it touched and only then acknowledges. A
//! reader notes the generation before reading the database and stores its answer tagged with
//! it only if the generation has not moved; an entry is served only while its tag equals the
//! current generation. A reader that raced a write can therefore never put an old answer back.
//!
//! Three modes: Redis shared by every replica (`CPIS_REDIS_URL`); in-process, only for a
//! single-process deployment (`--local-cache`, as `cpis dev`); or none.

use crate::error::{RegistryError, Result};
use crate::flag::Flag;
use crate::storage::flags::live_on;
use chrono::NaiveDate;
use cpis_proto::flag::FlagSet;
use platform::domain::NhsNumber;
use prost::Message;
use redis::aio::ConnectionManager;
use sea_orm::DatabaseConnection;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tokio::sync::OnceCell;
use tracing::Instrument;
use tracing::field::Empty;

/// Counts a lookup's hits and misses (`cpis_cache_lookups_total`) and notes them on its span.
fn looked_up(hits: usize, misses: usize) {
    platform::metrics::metrics().cache_looked_up(hits, misses);
    tracing::Span::current().record("hits", hits);
}

/// The flags on one number, every LA, deleted ones left out.
pub type FlagRows = Arc<Vec<Flag>>;

/// A backstop: an entry outlives no write by more than this, even if a bump were lost.
const ENTRY_TTL_SECONDS: u64 = 60;
/// Generations outlive every entry (and every reader's round trip) by far.
const GENERATION_TTL_SECONDS: u64 = 24 * 3600;
/// Numbers per Redis pipeline when invalidating a large upload.
const NUMBERS_PER_PIPELINE: usize = 10_000;
/// In-process entries kept before the cache starts afresh.
const LOCAL_CAPACITY: usize = 500_000;

/// Stores the entry only if the generation is still the one read before the database.
const FILL_IF_CURRENT: &str = r"
local current = redis.call('GET', KEYS[1]) or '0'
if current == ARGV[1] then
  redis.call('SET', KEYS[2], ARGV[2], 'EX', tonumber(ARGV[3]))
  return 1
end
return 0
";

#[derive(Clone)]
pub enum FlagCache {
    Off,
    Local(Arc<LocalCache>),
    Shared(SharedCache),
}

impl FlagCache {
    pub fn local() -> FlagCache {
        FlagCache::Local(Arc::new(LocalCache::default()))
    }

    /// Redis through `client` (see `platform::cache::client`); connects in the background,
    /// so a Redis down at start only means "no cache" until it answers.
    pub fn shared(client: redis::Client, key_prefix: &str) -> FlagCache {
        let conn = Arc::new(OnceCell::new());
        let cell = conn.clone();
        tokio::spawn(async move {
            loop {
                match platform::cache::connect(client.clone()).await {
                    Ok(manager) => {
                        let _ = cell.set(manager);
                        tracing::info!("flag cache: connected to Redis");
                        return;
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "flag cache: Redis not reachable yet");
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                }
            }
        });
        FlagCache::Shared(SharedCache {
            conn,
            fill: Arc::new(redis::Script::new(FILL_IF_CURRENT)),
            prefix: Arc::from(key_prefix),
        })
    }

    /// The flags on each number, in order: from the cache where current, else the database.
    pub async fn flags_on(
        &self,
        db: &DatabaseConnection,
        numbers: &[NhsNumber],
    ) -> Result<Vec<FlagRows>> {
        // A span per cache lookup, under the call's: a trace shows hits, misses and the
        // database reads they cost.
        match self {
            FlagCache::Off => from_database(db, numbers).await,
            FlagCache::Local(local) => {
                let span = tracing::info_span!(
                    "flag_cache.lookup",
                    cache = "in-process",
                    numbers = numbers.len(),
                    hits = Empty
                );
                local.flags_on(db, numbers).instrument(span).await
            }
            FlagCache::Shared(shared) => {
                let span = tracing::info_span!(
                    "flag_cache.lookup",
                    cache = "redis",
                    numbers = numbers.len(),
                    hits = Empty
                );
                shared.flags_on(db, numbers).instrument(span).await
            }
        }
    }

    /// Called after a write committed and before it is acknowledged: from now on no reader
    /// may be served what it read before the write. An error means the write must answer
    /// UNAVAILABLE (it stays committed; its retry invalidates again).
    pub async fn invalidate(&self, numbers: &[NhsNumber]) -> Result<()> {
        match self {
            FlagCache::Off => Ok(()),
            FlagCache::Local(local) => {
                local.bump(numbers);
                Ok(())
            }
            FlagCache::Shared(shared) => {
                let span = tracing::info_span!(
                    "redis bump generations",
                    otel.kind = "client",
                    db.system = "redis",
                    numbers = numbers.len()
                );
                shared.bump(numbers).instrument(span).await
            }
        }
    }
}

/// The database's answer for `numbers`, grouped per number in request order.
pub async fn from_database(
    db: &DatabaseConnection,
    numbers: &[NhsNumber],
) -> Result<Vec<FlagRows>> {
    let mut grouped: HashMap<NhsNumber, Vec<Flag>> = HashMap::new();
    for flag in live_on(db, numbers).await? {
        grouped.entry(flag.nhs_number).or_default().push(flag);
    }
    Ok(numbers
        .iter()
        .map(|n| Arc::new(grouped.get(n).cloned().unwrap_or_default()))
        .collect())
}

/// The in-process cache. Generations come from one counter; a number never written has the
/// `floor` generation, which moves past every generation handed out when the cache starts
/// afresh, so an answer read before that can no longer be stored.
#[derive(Default)]
pub struct LocalCache {
    state: Mutex<LocalState>,
}

#[derive(Default)]
struct LocalState {
    counter: u64,
    floor: u64,
    entries: HashMap<NhsNumber, LocalEntry>,
}

struct LocalEntry {
    generation: u64,
    rows: Option<FlagRows>,
}

impl LocalState {
    fn generation(&self, n: &NhsNumber) -> u64 {
        self.entries.get(n).map_or(self.floor, |e| e.generation)
    }
}

impl LocalCache {
    fn state(&self) -> MutexGuard<'_, LocalState> {
        // A panic while holding the lock leaves a consistent map: keep using it.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    async fn flags_on(
        &self,
        db: &DatabaseConnection,
        numbers: &[NhsNumber],
    ) -> Result<Vec<FlagRows>> {
        let seen: Vec<(u64, Option<FlagRows>)> = {
            let state = self.state();
            numbers
                .iter()
                .map(|n| match state.entries.get(n) {
                    Some(e) => (e.generation, e.rows.clone()),
                    None => (state.floor, None),
                })
                .collect()
        };
        let misses: Vec<NhsNumber> = numbers
            .iter()
            .zip(&seen)
            .filter(|(_, (_, rows))| rows.is_none())
            .map(|(n, _)| *n)
            .collect();
        looked_up(numbers.len() - misses.len(), misses.len());
        if misses.is_empty() {
            return Ok(seen.into_iter().filter_map(|(_, rows)| rows).collect());
        }
        let fetched = from_database(db, &misses).await?;
        let mut fetched_by_number: HashMap<NhsNumber, FlagRows> =
            misses.iter().copied().zip(fetched).collect();
        {
            let mut state = self.state();
            for (n, (generation, rows)) in numbers.iter().zip(&seen) {
                if rows.is_some() || state.generation(n) != *generation {
                    continue;
                }
                if let Some(fresh) = fetched_by_number.get(n) {
                    state.fill(*n, *generation, fresh.clone());
                }
            }
        }
        Ok(numbers
            .iter()
            .zip(seen)
            .map(|(n, (_, rows))| {
                rows.or_else(|| fetched_by_number.remove(n))
                    .unwrap_or_default()
            })
            .collect())
    }

    fn bump(&self, numbers: &[NhsNumber]) {
        let mut state = self.state();
        for n in numbers {
            state.counter += 1;
            let generation = state.counter;
            state.entries.insert(
                *n,
                LocalEntry {
                    generation,
                    rows: None,
                },
            );
        }
    }
}

impl LocalState {
    fn fill(&mut self, n: NhsNumber, generation: u64, rows: FlagRows) {
        if self.entries.len() >= LOCAL_CAPACITY && !self.entries.contains_key(&n) {
            self.counter += 1;
            self.floor = self.counter;
            self.entries.clear();
            // The generation read is now stale: this answer may not be stored.
            return;
        }
        self.entries.insert(
            n,
            LocalEntry {
                generation,
                rows: Some(rows),
            },
        );
    }
}

/// The Redis cache shared by every replica.
#[derive(Clone)]
pub struct SharedCache {
    conn: Arc<OnceCell<ConnectionManager>>,
    fill: Arc<redis::Script>,
    prefix: Arc<str>,
}

impl SharedCache {
    // The hash tag keeps a number's two keys in one slot, so the fill script is cluster-safe.
    fn generation_key(&self, n: &NhsNumber) -> String {
        format!("{}:{{{}}}:gen", self.prefix, n.as_str())
    }

    fn entry_key(&self, n: &NhsNumber) -> String {
        format!("{}:{{{}}}:entry", self.prefix, n.as_str())
    }

    fn connection(&self) -> Option<ConnectionManager> {
        self.conn.get().cloned()
    }

    async fn flags_on(
        &self,
        db: &DatabaseConnection,
        numbers: &[NhsNumber],
    ) -> Result<Vec<FlagRows>> {
        let Some(mut conn) = self.connection() else {
            looked_up(0, numbers.len());
            return from_database(db, numbers).await;
        };
        let keys: Vec<String> = numbers
            .iter()
            .flat_map(|n| [self.generation_key(n), self.entry_key(n)])
            .collect();
        // Generation and entry in one round trip, so the tag is compared with the generation
        // of the same instant.
        let read = tracing::info_span!(
            "redis MGET",
            otel.kind = "client",
            db.system = "redis",
            db.operation = "MGET"
        );
        let values: Vec<Option<Vec<u8>>> = match redis::cmd("MGET")
            .arg(&keys)
            .query_async(&mut conn)
            .instrument(read)
            .await
        {
            Ok(values) => values,
            Err(e) => {
                looked_up(0, numbers.len());
                tracing::debug!(error = %e, "flag cache: Redis read failed; reading the database");
                return from_database(db, numbers).await;
            }
        };
        let mut answers: Vec<Option<FlagRows>> = Vec::with_capacity(numbers.len());
        let mut misses: Vec<(usize, NhsNumber, Vec<u8>)> = Vec::new();
        for (i, n) in numbers.iter().enumerate() {
            let generation = values
                .get(2 * i)
                .cloned()
                .flatten()
                .unwrap_or_else(|| b"0".to_vec());
            let entry = values.get(2 * i + 1).cloned().flatten();
            match entry.and_then(|e| decode_entry(&e, &generation)) {
                Some(rows) => answers.push(Some(rows)),
                None => {
                    answers.push(None);
                    misses.push((i, *n, generation));
                }
            }
        }
        looked_up(numbers.len() - misses.len(), misses.len());
        if misses.is_empty() {
            return Ok(answers.into_iter().flatten().collect());
        }
        let miss_numbers: Vec<NhsNumber> = misses.iter().map(|(_, n, _)| *n).collect();
        let fetched = from_database(db, &miss_numbers).await?;
        let mut pipe = redis::pipe();
        pipe.load_script(&self.fill).ignore();
        for ((_, n, generation), rows) in misses.iter().zip(&fetched) {
            let entry = encode_entry(n, generation, rows);
            pipe.invoke_script(
                self.fill
                    .key(self.generation_key(n))
                    .key(self.entry_key(n))
                    .arg(generation.as_slice())
                    .arg(entry)
                    .arg(ENTRY_TTL_SECONDS),
            )
            .ignore();
        }
        let fill = tracing::info_span!(
            "redis fill if current",
            otel.kind = "client",
            db.system = "redis",
            db.operation = "EVALSHA"
        );
        if let Err(e) = pipe.query_async::<()>(&mut conn).instrument(fill).await {
            tracing::debug!(error = %e, "flag cache: could not store answers");
        }
        for ((i, _, _), rows) in misses.into_iter().zip(fetched) {
            answers[i] = Some(rows);
        }
        Ok(answers.into_iter().map(Option::unwrap_or_default).collect())
    }

    async fn bump(&self, numbers: &[NhsNumber]) -> Result<()> {
        let Some(mut conn) = self.connection() else {
            return Err(RegistryError::CacheNotInvalidated);
        };
        // A generation that expired, or vanished with a restarted Redis, starts again above
        // any value it had: microseconds since the epoch grow faster than bumps.
        let seed = chrono::Utc::now().timestamp_micros();
        for chunk in numbers.chunks(NUMBERS_PER_PIPELINE) {
            let mut pipe = redis::pipe();
            for n in chunk {
                let key = self.generation_key(n);
                pipe.cmd("SET")
                    .arg(&key)
                    .arg(seed)
                    .arg("NX")
                    .arg("EX")
                    .arg(GENERATION_TTL_SECONDS)
                    .ignore();
                pipe.cmd("INCR").arg(&key).ignore();
            }
            pipe.query_async::<()>(&mut conn).await.map_err(|e| {
                tracing::warn!(error = %e, "flag cache: could not bump generations");
                RegistryError::CacheNotInvalidated
            })?;
        }
        Ok(())
    }
}

/// `<generation>\n<FlagSet>`: the tag first, so a stale entry is recognised before decoding.
fn encode_entry(n: &NhsNumber, generation: &[u8], rows: &[Flag]) -> Vec<u8> {
    let set = FlagSet {
        nhs_number: n.as_str().to_owned(),
        // `active` is recomputed at each read; the date given here does not matter.
        flags: rows.iter().map(|f| f.to_proto(NaiveDate::MIN)).collect(),
    };
    let mut entry = Vec::with_capacity(generation.len() + 1 + set.encoded_len());
    entry.extend_from_slice(generation);
    entry.push(b'\n');
    set.encode(&mut entry).unwrap_or_default();
    entry
}

fn decode_entry(entry: &[u8], generation: &[u8]) -> Option<FlagRows> {
    let split = entry.iter().position(|b| *b == b'\n')?;
    let (tag, rest) = entry.split_at(split);
    if tag != generation {
        return None;
    }
    let set = FlagSet::decode(&rest[1..]).ok()?;
    let flags: Option<Vec<Flag>> = set.flags.iter().map(Flag::from_proto).collect();
    flags.map(Arc::new)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn an_entry_is_served_only_under_its_own_generation() {
        let n = NhsNumber::parse("9434765919").unwrap();
        let entry = encode_entry(&n, b"17", &[]);
        assert_eq!(decode_entry(&entry, b"17").map(|r| r.len()), Some(0));
        assert!(decode_entry(&entry, b"18").is_none());
        assert!(decode_entry(&entry, b"1").is_none());
        assert!(decode_entry(b"garbage", b"17").is_none());
    }

    #[test]
    fn local_fill_is_refused_once_the_generation_moved() {
        let cache = LocalCache::default();
        let n = NhsNumber::parse("9434765919").unwrap();
        let before = cache.state().generation(&n);
        cache.bump(&[n]);
        let mut state = cache.state();
        assert_ne!(state.generation(&n), before);
        // What a slow reader would do: it only fills when the generation is unchanged.
        if state.generation(&n) == before {
            state.fill(n, before, Arc::new(Vec::new()));
        }
        assert!(state.entries.get(&n).and_then(|e| e.rows.clone()).is_none());
    }
}
