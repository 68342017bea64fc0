//! The seeded draws: every random number the core uses (simulated
//! latencies and failures, retry jitter, exploration, the noise of
//! meta-learning) is one draw derived from the run's seed, a purpose, a
//! task and an attempt, so a replay draws the same numbers. Nothing here
//! keeps a generator's state.

/// A deterministic 64-bit draw for one use: the first 8 bytes of
/// `blake3(seed ‖ purpose ‖ task ‖ attempt)`.
pub fn draw(seed: u64, purpose: &str, task: &str, attempt: u32) -> u64 {
    let mut hasher = blake3::Hasher::new();
    hasher.update(&seed.to_le_bytes());
    hasher.update(purpose.as_bytes());
    hasher.update(&[0]);
    hasher.update(task.as_bytes());
    hasher.update(&[0]);
    hasher.update(&attempt.to_le_bytes());
    let bytes = hasher.finalize();
    let mut first = [0u8; 8];
    first.copy_from_slice(&bytes.as_bytes()[..8]);
    u64::from_le_bytes(first)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn draw_is_deterministic_and_separates_uses() {
        assert_eq!(draw(7, "latency", "t1", 1), draw(7, "latency", "t1", 1));
        assert_ne!(draw(7, "latency", "t1", 1), draw(7, "latency", "t1", 2));
        assert_ne!(draw(7, "latency", "t1", 1), draw(7, "failure", "t1", 1));
        assert_ne!(draw(7, "latency", "t1", 1), draw(8, "latency", "t1", 1));
    }
}
