//! A key's home partitions: where producers place its views.
//!
//! The views topic is keyed by `"{contentType}:{contentId}"`, and a producer's
//! partitioner turns the key into a partition. Two partitioners cover the clients in
//! use: librdkafka's default (`consistent_random`: CRC-32 of the key, modulo the
//! partition count), used by the ingest, `ingest publish` and every librdkafka-based
//! client; and the Java client's default (murmur2 of the key, sign bit cleared,
//! modulo the count), also kafkajs' and librdkafka's `murmur2`. A key's views are in
//! one of these two partitions unless an application chose another.
//!
//! Reads use this to wait only for the partitions a key can be in (contract,
//! guarantee 5: a partition that cannot be read safely makes only its own keys
//! answer 503).

/// The partitions the two default partitioners place `key` in, among `partitions`
/// (`[crc32, murmur2]`; the same one twice when they agree). `partitions` must be
/// at least 1.
pub fn homes(key: &[u8], partitions: i32) -> [i32; 2] {
    let n = partitions.max(1) as u32;
    let crc = crc32(key) % n;
    let murmur = (murmur2(key) & 0x7fff_ffff) % n;
    [crc as i32, murmur as i32]
}

/// CRC-32 (IEEE 802.3, the zlib one), as librdkafka's consistent partitioner uses.
fn crc32(bytes: &[u8]) -> u32 {
    const CRC32: crc::Crc<u32> = crc::Crc::<u32>::new(&crc::CRC_32_ISO_HDLC);
    CRC32.checksum(bytes)
}

/// Murmur2 (32-bit) with the Java client's seed: four bytes at a time, little-endian,
/// then the 1 to 3 left, then a final mix.
fn murmur2(bytes: &[u8]) -> u32 {
    const SEED: u32 = 0x9747_b28c;
    const M: u32 = 0x5bd1_e995;
    let mut h = SEED ^ bytes.len() as u32;
    let mut chunks = bytes.chunks_exact(4);
    for chunk in &mut chunks {
        let mut k = u32::from_le_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]);
        k = k.wrapping_mul(M);
        k ^= k >> 24;
        k = k.wrapping_mul(M);
        h = h.wrapping_mul(M) ^ k;
    }
    let rest = chunks.remainder();
    if !rest.is_empty() {
        for (i, b) in rest.iter().enumerate() {
            h ^= u32::from(*b) << (8 * i);
        }
        h = h.wrapping_mul(M);
    }
    h ^= h >> 13;
    h = h.wrapping_mul(M);
    h ^ (h >> 15)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc32_is_the_zlib_checksum() {
        // The standard check value of CRC-32/ISO-HDLC.
        assert_eq!(crc32(b"123456789"), 0xcbf4_3926);
        assert_eq!(crc32(b""), 0);
    }

    #[test]
    fn murmur2_matches_the_java_clients_values() {
        // Values the Java client's `Utils.murmur2` gives (as its signed int).
        for (key, java) in [
            ("21", -973_932_308),
            ("foobar", -790_332_482),
            ("abc", 479_470_107),
        ] {
            assert_eq!(murmur2(key.as_bytes()) as i32, java, "{key}");
        }
    }

    #[test]
    fn homes_lie_among_the_partitions_and_one_partition_is_home_to_all() {
        for key in ["resource:a", "page:/", "x", ""] {
            let [a, b] = homes(key.as_bytes(), 16);
            assert!((0..16).contains(&a) && (0..16).contains(&b), "{key}");
            assert_eq!(homes(key.as_bytes(), 1), [0, 0]);
        }
    }
}
