//! The stable user hash: user id -> shard.
//!
//! `shard = user_shards[jump(fnv1a64(utf8(user_id)), len(user_shards))]`
//!
//! - `fnv1a64` is 64-bit FNV-1a (offset basis `0xcbf29ce484222325`, prime
//!   `0x100000001b3`) over the UTF-8 bytes of the user id, exactly as given (no
//!   trimming, no case folding).
//! - `jump` is Lamping and Veach's jump consistent hash ("A Fast, Minimal Memory,
//!   Consistent Hash Algorithm", 2014): adding a bucket at the end moves only
//!   about 1/n of the keys.
//!
//! Both are a few lines in any language; the vectors in `docs/topology.md` and
//! in the tests below are the contract. Change nothing here without a
//! migration: every router in every language must agree.

use std::hash::Hasher;

use crate::model::ShardId;

/// 64-bit FNV-1a of the user id's UTF-8 bytes (from the `fnv` crate).
pub fn fnv1a64(user: &str) -> u64 {
    let mut h = fnv::FnvHasher::default();
    h.write(user.as_bytes());
    h.finish()
}

/// Jump consistent hash: a bucket in `0..buckets` for `key`.
/// `buckets` must be at least 1.
pub fn jump(mut key: u64, buckets: u32) -> u32 {
    let mut b: i64 = -1;
    let mut j: i64 = 0;
    while j < i64::from(buckets) {
        b = j;
        key = key.wrapping_mul(2_862_933_555_777_941_757).wrapping_add(1);
        // The reference uses doubles: (b + 1) * (2^31 / ((key >> 33) + 1)).
        j = ((b + 1) as f64 * ((1u64 << 31) as f64 / ((key >> 33) + 1) as f64)) as i64;
    }
    // `b` is in 0..buckets because the loop ran at least once (buckets >= 1).
    b.max(0) as u32
}

/// The shard a user id maps to, or `None` if `user_shards` is empty.
pub fn user_shard(user: &str, user_shards: &[ShardId]) -> Option<ShardId> {
    let n = u32::try_from(user_shards.len()).ok()?;
    if n == 0 {
        return None;
    }
    user_shards.get(jump(fnv1a64(user), n) as usize).copied()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// FNV-1a 64 reference vectors (from the FNV authors' test suite).
    #[test]
    fn fnv_vectors() {
        assert_eq!(fnv1a64(""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a64("a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(fnv1a64("foobar"), 0x8594_4171_f739_67e8);
    }

    /// Jump hash reference vectors, shared by the Go, C, Python and Elixir
    /// implementations of the paper's algorithm.
    #[test]
    fn jump_vectors() {
        assert_eq!(jump(1, 1), 0);
        assert_eq!(jump(42, 57), 43);
        assert_eq!(jump(0xDEAD_10CC, 1), 0);
        assert_eq!(jump(0xDEAD_10CC, 666), 361);
        assert_eq!(jump(256, 1024), 520);
        assert_eq!(jump(4, 2), 1);
        assert_eq!(jump(1, 128), 55);
        assert_eq!(jump(129, 128), 120);
        assert_eq!(jump(128, 100_000_000), 38_172_097);
        assert_eq!(jump(u64::MAX, 128), 92);
    }

    /// The user-hash vectors written down in docs/topology.md, with
    /// `user_shards = [1..=8]` (checked against an independent Python port).
    #[test]
    fn user_vectors() {
        let shards: Vec<ShardId> = (1..=8).collect();
        let got: Vec<(&str, ShardId)> = ["u1", "u2", "alice", "bob", "10086", "用户42"]
            .into_iter()
            .map(|u| (u, user_shard(u, &shards).unwrap()))
            .collect();
        assert_eq!(got, USER_VECTORS);
    }

    pub(crate) const USER_VECTORS: [(&str, ShardId); 6] = [
        ("u1", 5),
        ("u2", 5),
        ("alice", 5),
        ("bob", 3),
        ("10086", 1),
        ("用户42", 7),
    ];

    #[test]
    fn empty_has_no_shard() {
        assert_eq!(user_shard("u1", &[]), None);
    }

    proptest! {
        #[test]
        fn always_in_range(key: u64, n in 1u32..10_000) {
            prop_assert!(jump(key, n) < n);
        }

        #[test]
        fn user_shard_is_a_member(user in ".*", shards in proptest::collection::vec(0u32..100, 1..50)) {
            let s = user_shard(&user, &shards).unwrap();
            prop_assert!(shards.contains(&s));
        }

        /// Growing from n to n+1 buckets only moves keys to the new bucket.
        #[test]
        fn growth_moves_only_to_new_bucket(key: u64, n in 1u32..1000) {
            let before = jump(key, n);
            let after = jump(key, n + 1);
            prop_assert!(after == before || after == n);
        }
    }
}
