//! The cluster's slot map as `CLUSTER SLOTS` reports it: which master serves each slot.

use std::collections::BTreeMap;
use std::sync::Arc;

/// A shard master's address, `host:port`.
pub(super) type Addr = Arc<str>;

/// Slot ranges and their masters.
#[derive(Default)]
pub(super) struct SlotMap {
    /// First slot of a range → (last slot, master).
    ranges: BTreeMap<u16, (u16, Addr)>,
}

impl SlotMap {
    /// Reads the map through the cluster connection.
    pub(super) async fn read(
        redis: &flotilla_shared::redis_conn::Redis,
    ) -> redis::RedisResult<Self> {
        let ranges: Vec<redis::Value> = redis.query(redis::cmd("CLUSTER").arg("SLOTS")).await?;
        let ranges: BTreeMap<_, _> = ranges
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
    pub(super) fn is_empty(&self) -> bool {
        self.ranges.is_empty()
    }

    /// The master serving `slot`.
    pub(super) fn owner(&self, slot: u16) -> Option<Addr> {
        let (_, (last, addr)) = self.ranges.range(..=slot).next_back()?;
        (slot <= *last).then(|| addr.clone())
    }

    /// Every master that serves a slot.
    pub(super) fn masters(&self) -> impl Iterator<Item = &Addr> {
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
    use redis::Value;

    fn bulk(s: &str) -> Value {
        Value::BulkString(s.as_bytes().to_vec())
    }

    #[test]
    fn ranges_map_slots_to_their_master() {
        let entry = |first, last, port| {
            Value::Array(vec![
                Value::Int(first),
                Value::Int(last),
                Value::Array(vec![bulk("127.0.0.1"), Value::Int(port), bulk("id")]),
                Value::Array(vec![bulk("127.0.0.1"), Value::Int(port + 3), bulk("id2")]),
            ])
        };
        let ranges: BTreeMap<_, _> = [
            entry(0, 5460, 7000),
            entry(5461, 10922, 7001),
            entry(10923, 16383, 7002),
        ]
        .iter()
        .filter_map(parse_range)
        .map(|(first, last, addr)| (first, (last, Arc::from(addr))))
        .collect();
        let map = SlotMap { ranges };
        assert_eq!(map.owner(0).as_deref(), Some("127.0.0.1:7000"));
        assert_eq!(map.owner(5461).as_deref(), Some("127.0.0.1:7001"));
        assert_eq!(map.owner(16383).as_deref(), Some("127.0.0.1:7002"));
        assert_eq!(map.masters().count(), 3);
        // A gap (a slot no master serves) has no owner.
        let gap = SlotMap {
            ranges: [(0, (99, Arc::from("a:1")))].into_iter().collect(),
        };
        assert_eq!(gap.owner(100), None);
        assert!(parse_range(&bulk("garbage")).is_none());
    }
}
