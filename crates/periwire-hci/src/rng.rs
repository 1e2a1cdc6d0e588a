//! The numbers controllers and the host link draw: link keys, numeric comparison values.

/// xorshift64*: deterministic for a seed (so a simulation replays), as unguessable as its seed
/// (which the runtime draws from the kernel's pool where keys protect something real).
#[derive(Debug, Clone)]
pub(crate) struct KeyRng(u64);

impl KeyRng {
    /// A generator seeded with `seed` (0 is replaced: xorshift never leaves 0).
    pub(crate) fn new(seed: u64) -> Self {
        Self(if seed == 0 {
            0x9e37_79b9_7f4a_7c15
        } else {
            seed
        })
    }

    pub(crate) fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// A 128-bit link key.
    pub(crate) fn key(&mut self) -> [u8; 16] {
        let mut k = [0u8; 16];
        k[..8].copy_from_slice(&self.next_u64().to_le_bytes());
        k[8..].copy_from_slice(&self.next_u64().to_le_bytes());
        k
    }
}
