//! Byte layout of the `.trm` model blob: the definition the engine parses and the
//! compiler (`tinyres-compile`) writes. `FORMAT.md` is the prose version of this file;
//! keep them in step.

/// First four bytes of every blob.
pub const MAGIC: [u8; 4] = *b"TRM\0";
/// The format version this engine writes. It reads every version from 1 to this one:
/// version 2 added `header::F32_HEAD` (version 1 blobs have no f32 head), version 3
/// `tensor::ROWS_HELD` (row windows of streamed groups) and an int8 convolution's
/// folded biases after its biases, version 4 the `kind::SOFTMAX` layer, version 5
/// `flags::WINOGRAD`.
pub const VERSION: u16 = 5;
/// Size of the fixed header.
pub const HEADER_SIZE: usize = 64;
/// Size of one tensor record.
pub const TENSOR_RECORD_SIZE: usize = 24;
/// Size of one layer record.
pub const LAYER_RECORD_SIZE: usize = 64;
/// The CRC covers the blob from this offset to its end.
pub const CRC_START: usize = 16;
/// Alignment the writer gives every section and every arena buffer, so that future
/// SIMD kernels can load them directly.
pub const SECTION_ALIGN: usize = 16;
/// Most layers one streamed group may hold (version 3; a bottleneck block and its
/// projection: four).
pub const MAX_STREAM_GROUP: usize = 4;
/// `features_tensor` value meaning "no pooled-feature tensor".
pub const NO_TENSOR: u16 = 0xFFFF;

/// Header field offsets.
// Each constant is named after the field FORMAT.md documents.
#[allow(missing_docs)]
pub mod header {
    pub const MAGIC: usize = 0;
    pub const VERSION: usize = 4;
    pub const HEADER_SIZE: usize = 6;
    pub const TOTAL_SIZE: usize = 8;
    pub const CRC32: usize = 12;
    pub const DTYPE: usize = 16;
    pub const INPUT_RANGE: usize = 17;
    pub const NUM_TENSORS: usize = 18;
    pub const NUM_LAYERS: usize = 20;
    pub const FEATURES_TENSOR: usize = 22;
    pub const TENSOR_TABLE: usize = 24;
    pub const LAYER_TABLE: usize = 28;
    pub const PREPROCESS: usize = 32;
    pub const CLASS_NAMES: usize = 36;
    pub const ARENA_SIZE: usize = 40;
    /// Since version 2: in an int8 model, the first layer of the classifier head that
    /// computes in f32 (`num_layers`: none).
    pub const F32_HEAD: usize = 44;
}

/// Tensor record field offsets.
// Each constant is named after the field FORMAT.md documents.
#[allow(missing_docs)]
pub mod tensor {
    pub const HEIGHT: usize = 0;
    pub const WIDTH: usize = 2;
    pub const CHANNELS: usize = 4;
    /// Since version 3: rows the buffer holds, 0 for all (a whole tensor).
    pub const ROWS_HELD: usize = 6;
    pub const ARENA_OFFSET: usize = 8;
    pub const SCALE: usize = 12;
    pub const ZERO_POINT: usize = 16;
}

/// Layer record field offsets.
// Each constant is named after the field FORMAT.md documents.
#[allow(missing_docs)]
pub mod layer {
    pub const KIND: usize = 0;
    pub const FLAGS: usize = 1;
    pub const INPUT: usize = 2;
    pub const OUTPUT: usize = 4;
    pub const RESIDUAL_INPUT: usize = 6;
    pub const KERNEL_H: usize = 8;
    pub const KERNEL_W: usize = 9;
    pub const STRIDE: usize = 10;
    pub const RESIDUAL_STRIDE: usize = 11;
    pub const PAD_TOP: usize = 12;
    pub const PAD_LEFT: usize = 13;
    pub const PAD_BOTTOM: usize = 14;
    pub const PAD_RIGHT: usize = 15;
    pub const RESIDUAL_CHANNEL_OFFSET: usize = 16;
    pub const WEIGHTS: usize = 20;
    pub const BIAS: usize = 24;
    pub const MULTIPLIERS: usize = 28;
    pub const SHIFTS: usize = 32;
    pub const PRE_ADD_ZERO_POINT: usize = 36;
    pub const ADD_INPUT1_MULTIPLIER: usize = 40;
    pub const ADD_INPUT1_SHIFT: usize = 44;
    pub const ADD_INPUT2_MULTIPLIER: usize = 48;
    pub const ADD_INPUT2_SHIFT: usize = 52;
    pub const ADD_OUTPUT_MULTIPLIER: usize = 56;
    pub const ADD_OUTPUT_SHIFT: usize = 60;
    /// Since version 4, a softmax's fields (in the place of a convolution's add):
    /// the Q31 multiplier of the logits' differences (int8).
    pub const SOFTMAX_INPUT_MULTIPLIER: usize = 36;
    /// Its left shift (int8).
    pub const SOFTMAX_INPUT_LEFT_SHIFT: usize = 40;
    /// The smallest difference from the largest logit that still counts (int8).
    pub const SOFTMAX_DIFF_MIN: usize = 44;
    /// The logits' multiplier `beta`, f32 (the int8 fields above include it).
    pub const SOFTMAX_BETA: usize = 48;
    /// Since version 4, an int8 mean's Q31 multiplier (the element count folded in).
    pub const MEAN_MULTIPLIER: usize = 36;
    /// Its shift (−31..=30).
    pub const MEAN_SHIFT: usize = 40;
}

/// Layer kind codes.
// Each constant is named after the field FORMAT.md documents.
#[allow(missing_docs)]
pub mod kind {
    pub const CONV2D: u8 = 1;
    pub const GLOBAL_AVG_POOL: u8 = 2;
    pub const DENSE: u8 = 3;
    pub const MAX_POOL: u8 = 4;
    /// Since version 4.
    pub const SOFTMAX: u8 = 5;
    /// Since version 4: TFLite's MEAN over height and width.
    pub const MEAN: u8 = 6;
}

/// Layer flag bits.
pub mod flags {
    /// ReLU on the layer's own output (before any residual add).
    pub const RELU: u8 = 1 << 0;
    /// A residual input is added to the output.
    pub const RESIDUAL: u8 = 1 << 1;
    /// ReLU after the residual add.
    pub const RESIDUAL_RELU: u8 = 1 << 2;
    /// Since version 4, an int8 dense layer's requantization rounds once (LiteRT's
    /// FULLY_CONNECTED), not twice.
    pub const SINGLE_ROUNDING: u8 = 1 << 3;
    /// Since version 5, an int8 convolution's Winograd filters follow its weights
    /// ([`crate::winograd`]).
    pub const WINOGRAD: u8 = 1 << 4;
    /// Every defined bit.
    pub const ALL: u8 = RELU | RESIDUAL | RESIDUAL_RELU | SINGLE_ROUNDING | WINOGRAD;
}

/// Numeric type of a model: how weights are stored and activations computed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum DType {
    /// f32 weights and activations.
    F32 = 0,
    /// f16-stored weights, f32 biases and activations.
    F16 = 1,
    /// TFLite int8: per-channel symmetric int8 weights, int32 biases, per-tensor
    /// asymmetric int8 activations.
    Int8 = 2,
}

impl DType {
    /// Decodes the header byte.
    pub fn from_code(code: u8) -> Option<Self> {
        match code {
            0 => Some(DType::F32),
            1 => Some(DType::F16),
            2 => Some(DType::Int8),
            _ => None,
        }
    }

    /// Bytes of one weight element.
    pub fn weight_bytes(self) -> usize {
        match self {
            DType::F32 => 4,
            DType::F16 => 2,
            DType::Int8 => 1,
        }
    }
}

/// The range raw `u8` pixels are mapped to before mean/std normalisation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum InputRange {
    /// Pixels are used as they are, `0.0..=255.0`.
    Byte = 0,
    /// Pixels are divided by 255, `0.0..=1.0`.
    Unit = 1,
}

impl InputRange {
    /// Decodes the header byte.
    pub fn from_code(code: u8) -> Option<Self> {
        match code {
            0 => Some(InputRange::Byte),
            1 => Some(InputRange::Unit),
            _ => None,
        }
    }
}
