//! Moonshine's `tokenizer.bin` (as shipped in `moonshine-cpp`): no header, then one entry per
//! token id, `[u8 length][bytes]`. Ids 0-2 are `<unk> <s> </s>`, 3-258 the raw bytes 0-255,
//! the rest SentencePiece pieces where `▁` (U+2581) stands for a space.

use std::path::Path;

#[derive(Debug, thiserror::Error)]
pub enum TokenizerError {
    #[error("reading {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("tokenizer.bin: entry {id} runs past the end of the file")]
    Truncated { id: usize },
    #[error("tokenizer.bin: {0} entries, expected at least 259 (3 specials + 256 bytes)")]
    TooSmall(usize),
}

/// Ids below this are special tokens and have no text.
const FIRST_TEXT_ID: u32 = 3;

#[derive(Debug, Clone)]
pub struct Tokenizer {
    pieces: Vec<Vec<u8>>,
}

impl Tokenizer {
    pub fn read(path: &Path) -> Result<Self, TokenizerError> {
        let bytes = std::fs::read(path).map_err(|source| TokenizerError::Io {
            path: path.display().to_string(),
            source,
        })?;
        Self::parse(&bytes)
    }

    pub fn parse(bytes: &[u8]) -> Result<Self, TokenizerError> {
        let mut pieces = Vec::new();
        let mut at = 0;
        while at < bytes.len() {
            let len = bytes[at] as usize;
            let piece = bytes
                .get(at + 1..at + 1 + len)
                .ok_or(TokenizerError::Truncated { id: pieces.len() })?;
            pieces.push(piece.to_vec());
            at += 1 + len;
        }
        if pieces.len() < 259 {
            return Err(TokenizerError::TooSmall(pieces.len()));
        }
        Ok(Self { pieces })
    }

    /// Token ids with text (the model's logits have padding ids above this).
    pub fn len(&self) -> usize {
        self.pieces.len()
    }

    pub fn is_empty(&self) -> bool {
        self.pieces.is_empty()
    }

    /// Text of `ids`: specials and ids without an entry are skipped, `▁` becomes a space,
    /// byte tokens join their neighbours before UTF-8 decoding; trimmed.
    pub fn decode(&self, ids: &[u32]) -> String {
        let mut bytes = Vec::new();
        for &id in ids {
            if id < FIRST_TEXT_ID {
                continue;
            }
            if let Some(piece) = self.pieces.get(id as usize) {
                bytes.extend_from_slice(piece);
            }
        }
        String::from_utf8_lossy(&bytes)
            .replace('\u{2581}', " ")
            .trim()
            .to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn synthetic() -> Vec<u8> {
        let mut b = Vec::new();
        for p in ["<unk>", "<s>", "</s>"] {
            b.push(p.len() as u8);
            b.extend(p.as_bytes());
        }
        for byte in 0..=255u8 {
            b.extend([1, byte]);
        }
        for p in ["\u{2581}He", "\u{2581}was", "llo"] {
            b.push(p.len() as u8);
            b.extend(p.as_bytes());
        }
        b
    }

    #[test]
    fn decodes_pieces_bytes_and_skips_specials() {
        let t = Tokenizer::parse(&synthetic()).unwrap();
        assert_eq!(t.len(), 262);
        assert_eq!(t.decode(&[1, 259, 261, 260, 2]), "Hello was");
        // "é" as two byte tokens (0xC3 0xA9), each id = 3 + byte.
        assert_eq!(t.decode(&[260, 3 + 0xC3, 3 + 0xA9]), "was\u{e9}");
        assert_eq!(t.decode(&[40_000]), "");
    }

    #[test]
    fn truncated_and_tiny_files_are_errors() {
        let b = synthetic();
        assert!(matches!(
            Tokenizer::parse(&b[..b.len() - 1]),
            Err(TokenizerError::Truncated { id: 261 })
        ));
        assert!(matches!(
            Tokenizer::parse(&b[..20]),
            Err(TokenizerError::TooSmall(_) | TokenizerError::Truncated { .. })
        ));
    }
}
