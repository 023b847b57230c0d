//! How a sketch is stored in Postgres, version 1:
//! `[1, kind, precision]` and then, for kind 0 (sparse, precision 26), the entries as
//! big-endian `u32`s in ascending order, one per index; for kind 1 (dense, precision
//! 14), the registers packed 6 bits each, four in three bytes. An empty byte string
//! is the empty sketch. The largest encoding is 12,291 bytes.
//!
//! Decoding refuses anything the encoder would not write, naming what is wrong.

use super::{
    entry_index, rest_bits, Repr, Sketch, HEADER, KIND_DENSE, KIND_SPARSE, M, P, RANK_BITS,
    SPARSE_MAX, SPARSE_P, VERSION,
};

/// What is wrong with bytes that should be a sketch.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SketchError {
    #[error("sketch of {0} bytes has no complete header")]
    Header(usize),
    #[error("sketch encoding version {0} is unknown (this build reads version {VERSION})")]
    Version(u8),
    #[error("sketch kind {0} is unknown")]
    Kind(u8),
    #[error("sketch of kind {kind} has precision {found}, expected {expected}")]
    Precision { kind: u8, found: u8, expected: u32 },
    #[error("sketch body of {0} bytes does not fit its kind")]
    Length(usize),
    #[error("sparse entry {0} is out of order, repeated or has an impossible rank")]
    Entry(usize),
    #[error("dense register {0} holds an impossible rank")]
    Register(usize),
}

impl Sketch {
    /// The bytes stored in Postgres (see the module documentation).
    pub fn encode(&self) -> Vec<u8> {
        let settled = self.settled();
        match &settled.repr {
            Repr::Sparse { entries, .. } => {
                let mut out = Vec::with_capacity(HEADER + entries.len() * 4);
                out.extend_from_slice(&[VERSION, KIND_SPARSE, SPARSE_P as u8]);
                for entry in entries.iter() {
                    out.extend_from_slice(&entry.to_be_bytes());
                }
                out
            }
            Repr::Dense(registers) => {
                let mut out = Vec::with_capacity(HEADER + M * 3 / 4);
                out.extend_from_slice(&[VERSION, KIND_DENSE, P as u8]);
                for four in registers.chunks_exact(4) {
                    let packed = u32::from(four[0]) << 18
                        | u32::from(four[1]) << 12
                        | u32::from(four[2]) << 6
                        | u32::from(four[3]);
                    out.extend_from_slice(&packed.to_be_bytes()[1..]);
                }
                out
            }
        }
    }

    /// Reads [`Sketch::encode`]'s bytes, refusing anything it would not write.
    pub fn decode(bytes: &[u8]) -> Result<Self, SketchError> {
        if bytes.is_empty() {
            return Ok(Self::default());
        }
        let Some((&[version, kind, precision], body)) = bytes.split_first_chunk::<HEADER>() else {
            return Err(SketchError::Header(bytes.len()));
        };
        if version != VERSION {
            return Err(SketchError::Version(version));
        }
        let expected = match kind {
            KIND_SPARSE => SPARSE_P,
            KIND_DENSE => P,
            other => return Err(SketchError::Kind(other)),
        };
        if u32::from(precision) != expected {
            return Err(SketchError::Precision {
                kind,
                found: precision,
                expected,
            });
        }
        if kind == KIND_SPARSE {
            if body.len() % 4 != 0 || body.len() / 4 > SPARSE_MAX {
                return Err(SketchError::Length(body.len()));
            }
            let max_rank = rest_bits(SPARSE_P) + 1;
            let mut entries = Vec::with_capacity(body.len() / 4);
            for (i, chunk) in body.chunks_exact(4).enumerate() {
                let entry = u32::from_be_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]);
                let rank = entry & ((1 << RANK_BITS) - 1);
                let ordered = entries
                    .last()
                    .is_none_or(|&last| entry_index(last) < entry_index(entry));
                if !ordered || rank == 0 || rank > max_rank {
                    return Err(SketchError::Entry(i));
                }
                entries.push(entry);
            }
            let sorted = entries.len();
            return Ok(Self {
                repr: Repr::Sparse { entries, sorted },
            });
        }
        if body.len() != M * 3 / 4 {
            return Err(SketchError::Length(body.len()));
        }
        let max_rank = rest_bits(P) as u8 + 1;
        let mut registers = vec![0u8; M].into_boxed_slice();
        for (i, three) in body.chunks_exact(3).enumerate() {
            let packed = u32::from_be_bytes([0, three[0], three[1], three[2]]);
            for j in 0..4 {
                let r = ((packed >> (18 - 6 * j)) & 0x3f) as u8;
                if r > max_rank {
                    return Err(SketchError::Register(i * 4 + j));
                }
                registers[i * 4 + j] = r;
            }
        }
        Ok(Self {
            repr: Repr::Dense(registers),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::sketch_of;
    use super::*;

    #[test]
    fn encodings_round_trip_and_bad_bytes_are_named() {
        for n in [0, 1, 1000, SPARSE_MAX, 100_000] {
            let s = sketch_of(9, n);
            let bytes = s.encode();
            assert!(
                bytes.len() <= HEADER + M * 3 / 4,
                "{n}: {} bytes",
                bytes.len()
            );
            let back = Sketch::decode(&bytes).expect("decodes");
            assert_eq!(back, s, "{n}");
            assert_eq!(back.estimate(), s.estimate());
            assert_eq!(back.encode(), bytes);
        }
        assert_eq!(Sketch::decode(&[]), Ok(Sketch::default()));
        let sparse = sketch_of(9, 10).encode();
        let dense = sketch_of(9, 10_000).encode();
        let mut v2 = sparse.clone();
        v2[0] = 2;
        assert_eq!(Sketch::decode(&v2), Err(SketchError::Version(2)));
        assert_eq!(Sketch::decode(&[1, 0]), Err(SketchError::Header(2)));
        let mut kind = sparse.clone();
        kind[1] = 7;
        assert_eq!(Sketch::decode(&kind), Err(SketchError::Kind(7)));
        let mut precision = dense.clone();
        precision[2] = 12;
        assert!(matches!(
            Sketch::decode(&precision),
            Err(SketchError::Precision { found: 12, .. })
        ));
        assert_eq!(
            Sketch::decode(&sparse[..sparse.len() - 1]),
            Err(SketchError::Length(39))
        );
        let mut swapped = sparse.clone();
        swapped[3..7].copy_from_slice(&sparse[7..11]);
        swapped[7..11].copy_from_slice(&sparse[3..7]);
        assert_eq!(Sketch::decode(&swapped), Err(SketchError::Entry(1)));
        let mut too_high = dense.clone();
        too_high[HEADER] = 0xff;
        assert_eq!(Sketch::decode(&too_high), Err(SketchError::Register(0)));
    }
}
