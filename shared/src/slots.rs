//! Redis Cluster key slots: which of the 16,384 slots a key or shard channel hashes to, and
//! which master serves each slot.
//!
//! The gateway needs this to group sharded subscriptions by slot (one `SSUBSCRIBE` may name
//! channels of one slot only) and to find the shard that owns a channel; the cluster handle
//! watches the map to notice failovers.

use std::collections::BTreeMap;
use std::sync::Arc;

/// Number of hash slots in a Redis Cluster.
pub const SLOTS: u16 = 16384;

/// The slot of `key`: CRC16 (XMODEM) of its hash tag — the text between the first `{` and
/// the next `}`, when not empty — or of the whole key, modulo [`SLOTS`].
pub fn slot(key: &[u8]) -> u16 {
    let tagged = key
        .iter()
        .position(|&b| b == b'{')
        .and_then(|open| {
            let rest = &key[open + 1..];
            let close = rest.iter().position(|&b| b == b'}')?;
            (close > 0).then(|| &rest[..close])
        })
        .unwrap_or(key);
    crc16::State::<crc16::XMODEM>::calculate(tagged) % SLOTS
}

/// A shard master's address, `host:port`.
pub type Addr = Arc<str>;

/// Slot ranges and their masters, as `CLUSTER SLOTS` reports them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SlotMap {
    /// First slot of a range → (last slot, master).
    ranges: BTreeMap<u16, (u16, Addr)>,
}

impl SlotMap {
    /// Parses a `CLUSTER SLOTS` reply; an error when it names no slot.
    pub fn parse(reply: &[redis::Value]) -> redis::RedisResult<Self> {
        let ranges: BTreeMap<_, _> = reply
            .iter()
            .filter_map(parse_range)
            .map(|(first, last, addr)| (first, (last, Arc::from(addr))))
            .collect();
        if ranges.is_empty() {
            return Err(redis::RedisError::from((
                redis::ErrorKind::ClusterDown,
                "the cluster reports no slots",
            )));
        }
        Ok(Self { ranges })
    }

    /// Whether no map was read yet.
    pub fn is_empty(&self) -> bool {
        self.ranges.is_empty()
    }

    /// The master serving `slot`.
    pub fn owner(&self, slot: u16) -> Option<Addr> {
        let (_, (last, addr)) = self.ranges.range(..=slot).next_back()?;
        (slot <= *last).then(|| addr.clone())
    }

    /// Every master that serves a slot.
    pub fn masters(&self) -> impl Iterator<Item = &Addr> {
        self.ranges.values().map(|(_, addr)| addr)
    }
}

/// One `CLUSTER SLOTS` entry: `[first, last, [host, port, ...], replicas...]`.
fn parse_range(range: &redis::Value) -> Option<(u16, u16, String)> {
    let redis::Value::Array(items) = range else {
        return None;
    };
    let first: u16 = redis::from_redis_value(items.first()?).ok()?;
    let last: u16 = redis::from_redis_value(items.get(1)?).ok()?;
    let redis::Value::Array(master) = items.get(2)? else {
        return None;
    };
    let host: String = redis::from_redis_value(master.first()?).ok()?;
    let port: u16 = redis::from_redis_value(master.get(1)?).ok()?;
    Some((first, last, format!("{host}:{port}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_match_redis() {
        // Values from `CLUSTER KEYSLOT` on Redis 7.
        assert_eq!(slot(b"foo"), 12182);
        assert_eq!(slot(b"bar"), 5061);
        assert_eq!(slot(b"{user1000}.following"), slot(b"user1000"));
        assert_eq!(slot(b"{user1000}.followers"), slot(b"{user1000}.following"));
        // An empty tag does not count: the whole key is hashed.
        assert_eq!(
            slot(b"foo{}{bar}"),
            crc16::State::<crc16::XMODEM>::calculate(b"foo{}{bar}") % SLOTS
        );
        // Only the first tag counts.
        assert_eq!(slot(b"foo{{bar}}zap"), slot(b"{bar"));
        assert_eq!(slot(b"foo{bar}{zap}"), slot(b"bar"));
    }

    fn bulk(s: &str) -> redis::Value {
        redis::Value::BulkString(s.as_bytes().to_vec())
    }

    #[test]
    fn a_slot_map_gives_each_slot_its_master() {
        use redis::Value;
        let entry = |first, last, port| {
            Value::Array(vec![
                Value::Int(first),
                Value::Int(last),
                Value::Array(vec![bulk("127.0.0.1"), Value::Int(port), bulk("id")]),
                Value::Array(vec![bulk("127.0.0.1"), Value::Int(port + 3), bulk("id2")]),
            ])
        };
        let map = SlotMap::parse(&[
            entry(0, 5460, 7000),
            entry(5461, 10922, 7001),
            entry(10923, 16383, 7002),
            bulk("garbage"),
        ])
        .unwrap();
        assert_eq!(map.owner(0).as_deref(), Some("127.0.0.1:7000"));
        assert_eq!(map.owner(5461).as_deref(), Some("127.0.0.1:7001"));
        assert_eq!(map.owner(16383).as_deref(), Some("127.0.0.1:7002"));
        assert_eq!(map.masters().count(), 3);
        // A gap (a slot no master serves) has no owner.
        let gap = SlotMap::parse(&[entry(0, 99, 7000)]).unwrap();
        assert_eq!(gap.owner(100), None);
        assert!(SlotMap::parse(&[]).is_err());
    }
}
