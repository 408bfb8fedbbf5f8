//! (being written on branch `seek`; a stand-in until then)

use super::LayerIndex;

/// Encodes an index (stand-in: nothing is stored).
pub fn encode(_index: &LayerIndex) -> Vec<u8> {
    Vec::new()
}

/// Decodes an index (stand-in: never).
pub fn decode(_bytes: &[u8]) -> Result<LayerIndex, String> {
    Err("no index format yet".into())
}
