//! PEM encoding and decoding.

use pem::{EncodeConfig, LineEnding, Pem};

/// Encodes `der` as one PEM block with Unix line endings.
pub(crate) fn encode_pem(tag: &str, der: &[u8]) -> String {
    pem::encode_config(
        &Pem::new(tag, der),
        EncodeConfig::new().set_line_ending(LineEnding::LF),
    )
}

/// The contents of the first PEM block tagged `tag` in `text`.
pub(crate) fn single_pem_block(text: &str, tag: &str) -> Result<Vec<u8>, String> {
    all_pem_blocks(text, tag)?
        .into_iter()
        .next()
        .ok_or_else(|| format!("no {tag:?} block found"))
}

/// The contents of every PEM block tagged `tag` in `text`, in order.
pub(crate) fn all_pem_blocks(text: &str, tag: &str) -> Result<Vec<Vec<u8>>, String> {
    let blocks = pem::parse_many(text).map_err(|e| e.to_string())?;
    Ok(blocks
        .into_iter()
        .filter(|b| b.tag() == tag)
        .map(Pem::into_contents)
        .collect())
}
