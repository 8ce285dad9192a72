//! A bounded GGUF reader.
//!
//! GGUF files come from users and, for Scouts, over the network, so the reader treats every
//! byte as hostile: each length is checked against the bytes that remain before anything is
//! allocated, counts are capped, arithmetic is checked, and every failure is an error with the
//! offset where it happened. It never panics. Tensor data is borrowed, not copied.

use std::collections::BTreeMap;
use std::fmt;

/// The four bytes every GGUF file starts with.
pub const MAGIC: [u8; 4] = *b"GGUF";
/// Alignment of the tensor data section when `general.alignment` is absent.
pub const DEFAULT_ALIGNMENT: u64 = 32;

/// Caps that keep a hostile header from asking for absurd amounts of work.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_tensors: u64,
    pub max_kv: u64,
    pub max_string_bytes: u64,
    pub max_array_len: u64,
    pub max_dims: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Self { max_tensors: 1 << 16, max_kv: 1 << 16, max_string_bytes: 1 << 24, max_array_len: 1 << 24, max_dims: 4 }
    }
}

/// Why a file was rejected.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum GgufError {
    #[error("not a GGUF file (magic {0:02x?})")]
    BadMagic([u8; 4]),
    #[error("GGUF version {0} is not supported (2 and 3 are)")]
    UnsupportedVersion(u32),
    #[error("file truncated at byte {offset}: {what} needs {need} more bytes, {have} remain")]
    Truncated { offset: u64, what: &'static str, need: u64, have: u64 },
    #[error("{what} = {value} exceeds the limit of {limit}")]
    TooLarge { what: &'static str, value: u64, limit: u64 },
    #[error("string at byte {offset} is not valid UTF-8")]
    InvalidUtf8 { offset: u64 },
    #[error("unknown metadata value type {ty} at byte {offset}")]
    UnknownValueType { ty: u32, offset: u64 },
    #[error("nested metadata arrays are not supported (key {key:?})")]
    NestedArray { key: String },
    #[error("duplicate {what} {name:?}")]
    Duplicate { what: &'static str, name: String },
    #[error("tensor {name:?}: {reason}")]
    BadTensor { name: String, reason: String },
    #[error("metadata {key:?}: {reason}")]
    BadMetadata { key: String, reason: String },
}

/// A tensor element type, as ggml numbers them. `I2S` is microsoft/BitNet's ternary layout.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[allow(non_camel_case_types)]
pub enum GgmlType {
    F32,
    F16,
    Q4_0,
    Q4_1,
    Q5_0,
    Q5_1,
    Q8_0,
    Q8_1,
    Q2_K,
    Q3_K,
    Q4_K,
    Q5_K,
    Q6_K,
    Q8_K,
    IQ2_XXS,
    IQ2_XS,
    IQ3_XXS,
    IQ1_S,
    IQ4_NL,
    IQ3_S,
    IQ2_S,
    IQ4_XS,
    I8,
    I16,
    I32,
    I64,
    F64,
    IQ1_M,
    BF16,
    TQ1_0,
    TQ2_0,
    I2_S,
    MXFP4,
}

impl GgmlType {
    /// Maps ggml's numeric id to a type; `None` for ids this reader does not know.
    pub fn from_id(id: u32) -> Option<Self> {
        use GgmlType::*;
        Some(match id {
            0 => F32,
            1 => F16,
            2 => Q4_0,
            3 => Q4_1,
            6 => Q5_0,
            7 => Q5_1,
            8 => Q8_0,
            9 => Q8_1,
            10 => Q2_K,
            11 => Q3_K,
            12 => Q4_K,
            13 => Q5_K,
            14 => Q6_K,
            15 => Q8_K,
            16 => IQ2_XXS,
            17 => IQ2_XS,
            18 => IQ3_XXS,
            19 => IQ1_S,
            20 => IQ4_NL,
            21 => IQ3_S,
            22 => IQ2_S,
            23 => IQ4_XS,
            24 => I8,
            25 => I16,
            26 => I32,
            27 => I64,
            28 => F64,
            29 => IQ1_M,
            30 => BF16,
            34 => TQ1_0,
            35 => TQ2_0,
            36 => I2_S,
            39 => MXFP4,
            _ => return None,
        })
    }

    /// (elements per block, bytes per block). I2_S is special-cased in [`GgmlType::byte_size`].
    pub fn block(self) -> (u64, u64) {
        use GgmlType::*;
        match self {
            F32 | I32 => (1, 4),
            F16 | BF16 | I16 => (1, 2),
            I8 => (1, 1),
            I64 | F64 => (1, 8),
            Q4_0 | IQ4_NL => (32, 18),
            Q4_1 => (32, 20),
            Q5_0 => (32, 22),
            Q5_1 => (32, 24),
            Q8_0 => (32, 34),
            Q8_1 => (32, 36),
            MXFP4 => (32, 17),
            Q2_K => (256, 84),
            Q3_K | IQ3_S => (256, 110),
            Q4_K => (256, 144),
            Q5_K => (256, 176),
            Q6_K => (256, 210),
            Q8_K => (256, 292),
            IQ2_XXS | TQ2_0 => (256, 66),
            IQ2_XS => (256, 74),
            IQ3_XXS => (256, 98),
            IQ1_S => (256, 50),
            IQ2_S => (256, 82),
            IQ4_XS => (256, 136),
            IQ1_M => (256, 56),
            TQ1_0 => (256, 54),
            I2_S => (128, 32),
        }
    }

    /// Bytes that `n_elements` of this type occupy, or `None` if `n_elements` does not fill
    /// whole blocks (or overflows). I2_S adds its trailing 32-byte scale record.
    pub fn byte_size(self, n_elements: u64) -> Option<u64> {
        let (blk, bytes) = self.block();
        if n_elements % blk != 0 {
            return None;
        }
        let body = (n_elements / blk).checked_mul(bytes)?;
        if self == GgmlType::I2_S {
            body.checked_add(32)
        } else {
            Some(body)
        }
    }
}

impl fmt::Display for GgmlType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

/// One metadata value.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    U8(u8),
    I8(i8),
    U16(u16),
    I16(i16),
    U32(u32),
    I32(i32),
    F32(f32),
    Bool(bool),
    String(String),
    Array(Array),
    U64(u64),
    I64(i64),
    F64(f64),
}

/// A homogeneous metadata array.
#[derive(Debug, Clone, PartialEq)]
pub enum Array {
    U8(Vec<u8>),
    I8(Vec<i8>),
    U16(Vec<u16>),
    I16(Vec<i16>),
    U32(Vec<u32>),
    I32(Vec<i32>),
    F32(Vec<f32>),
    Bool(Vec<bool>),
    String(Vec<String>),
    U64(Vec<u64>),
    I64(Vec<i64>),
    F64(Vec<f64>),
}

impl Array {
    pub fn len(&self) -> usize {
        match self {
            Array::U8(v) => v.len(),
            Array::I8(v) => v.len(),
            Array::U16(v) => v.len(),
            Array::I16(v) => v.len(),
            Array::U32(v) => v.len(),
            Array::I32(v) => v.len(),
            Array::F32(v) => v.len(),
            Array::Bool(v) => v.len(),
            Array::String(v) => v.len(),
            Array::U64(v) => v.len(),
            Array::I64(v) => v.len(),
            Array::F64(v) => v.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The elements as i64 if this is an integer array.
    pub fn to_i64s(&self) -> Option<Vec<i64>> {
        Some(match self {
            Array::U8(v) => v.iter().map(|&x| x as i64).collect(),
            Array::I8(v) => v.iter().map(|&x| x as i64).collect(),
            Array::U16(v) => v.iter().map(|&x| x as i64).collect(),
            Array::I16(v) => v.iter().map(|&x| x as i64).collect(),
            Array::U32(v) => v.iter().map(|&x| x as i64).collect(),
            Array::I32(v) => v.iter().map(|&x| x as i64).collect(),
            Array::U64(v) => v.iter().map(|&x| x as i64).collect(),
            Array::I64(v) => v.clone(),
            _ => return None,
        })
    }
}

impl Value {
    /// The value as an unsigned integer, whatever its integer width.
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            Value::U8(v) => Some(v as u64),
            Value::U16(v) => Some(v as u64),
            Value::U32(v) => Some(v as u64),
            Value::U64(v) => Some(v),
            Value::I8(v) => u64::try_from(v).ok(),
            Value::I16(v) => u64::try_from(v).ok(),
            Value::I32(v) => u64::try_from(v).ok(),
            Value::I64(v) => u64::try_from(v).ok(),
            _ => None,
        }
    }

    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            Value::F32(v) => Some(v as f64),
            Value::F64(v) => Some(v),
            _ => self.as_u64().map(|v| v as f64),
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::String(s) => Some(s),
            _ => None,
        }
    }

    pub fn as_bool(&self) -> Option<bool> {
        match *self {
            Value::Bool(b) => Some(b),
            _ => None,
        }
    }

    pub fn as_array(&self) -> Option<&Array> {
        match self {
            Value::Array(a) => Some(a),
            _ => None,
        }
    }
}

/// Where one tensor lives and what it holds.
#[derive(Debug, Clone, PartialEq)]
pub struct TensorInfo {
    pub name: String,
    /// ggml order: `dims[0]` is the row length (the fastest-varying dimension).
    pub dims: Vec<u64>,
    pub ty: GgmlType,
    /// Offset from the start of the data section.
    pub offset: u64,
    /// Bytes the tensor occupies.
    pub size: u64,
}

impl TensorInfo {
    pub fn n_elements(&self) -> u64 {
        self.dims.iter().product()
    }
}

/// A parsed GGUF file that borrows its tensor bytes from the input.
#[derive(Debug)]
pub struct Gguf<'a> {
    pub version: u32,
    pub metadata: BTreeMap<String, Value>,
    pub tensors: Vec<TensorInfo>,
    pub alignment: u64,
    /// Absolute offset of the data section in the input.
    pub data_offset: u64,
    data: &'a [u8],
}

impl<'a> Gguf<'a> {
    /// Parses with the default [`Limits`].
    pub fn parse(bytes: &'a [u8]) -> Result<Self, GgufError> {
        Self::parse_with(bytes, Limits::default())
    }

    pub fn parse_with(bytes: &'a [u8], limits: Limits) -> Result<Self, GgufError> {
        let mut r = Reader { buf: bytes, pos: 0 };
        let magic: [u8; 4] = r.take(4, "magic")?.try_into().expect("4 bytes");
        if magic != MAGIC {
            return Err(GgufError::BadMagic(magic));
        }
        let version = r.u32("version")?;
        if !(2..=3).contains(&version) {
            return Err(GgufError::UnsupportedVersion(version));
        }
        let n_tensors = r.u64("tensor count")?;
        let n_kv = r.u64("metadata count")?;
        check_limit("tensor count", n_tensors, limits.max_tensors)?;
        check_limit("metadata count", n_kv, limits.max_kv)?;

        let mut metadata = BTreeMap::new();
        for _ in 0..n_kv {
            let key = r.string(&limits, "metadata key")?;
            let ty = r.u32("metadata value type")?;
            let value = r.value(ty, &limits, &key)?;
            if metadata.contains_key(&key) {
                return Err(GgufError::Duplicate { what: "metadata key", name: key });
            }
            metadata.insert(key, value);
        }

        let alignment = match metadata.get("general.alignment") {
            None => DEFAULT_ALIGNMENT,
            Some(v) => match v.as_u64() {
                Some(a) if a > 0 && a.is_power_of_two() && a <= 1 << 20 => a,
                _ => {
                    return Err(GgufError::BadMetadata {
                        key: "general.alignment".into(),
                        reason: format!("must be a power of two up to 1 MiB, got {v:?}"),
                    })
                }
            },
        };

        // Each tensor info takes at least 8 (name length) + 4 + 4 + 8 bytes.
        r.ensure(n_tensors.saturating_mul(24), "tensor infos")?;
        let mut tensors: Vec<TensorInfo> = Vec::with_capacity(n_tensors as usize);
        let mut names = std::collections::HashSet::new();
        for _ in 0..n_tensors {
            let name = r.string(&limits, "tensor name")?;
            let n_dims = r.u32("tensor dimension count")?;
            if n_dims == 0 || n_dims > limits.max_dims {
                return Err(bad_tensor(&name, format!("has {n_dims} dimensions (1..={} allowed)", limits.max_dims)));
            }
            let mut dims = Vec::with_capacity(n_dims as usize);
            let mut n_elements: u64 = 1;
            for _ in 0..n_dims {
                let d = r.u64("tensor dimension")?;
                if d == 0 {
                    return Err(bad_tensor(&name, "has a zero dimension".into()));
                }
                n_elements = n_elements
                    .checked_mul(d)
                    .filter(|&n| n < 1 << 48)
                    .ok_or_else(|| bad_tensor(&name, "element count overflows".into()))?;
                dims.push(d);
            }
            let ty_id = r.u32("tensor type")?;
            let ty = GgmlType::from_id(ty_id).ok_or_else(|| bad_tensor(&name, format!("unknown ggml type {ty_id}")))?;
            let (blk, _) = ty.block();
            if dims[0] % blk != 0 {
                return Err(bad_tensor(&name, format!("row length {} is not a multiple of {ty}'s block size {blk}", dims[0])));
            }
            let size = ty
                .byte_size(n_elements)
                .ok_or_else(|| bad_tensor(&name, format!("{n_elements} elements do not fill whole {ty} blocks")))?;
            let offset = r.u64("tensor offset")?;
            if offset % alignment != 0 {
                return Err(bad_tensor(&name, format!("offset {offset} is not aligned to {alignment}")));
            }
            if !names.insert(name.clone()) {
                return Err(GgufError::Duplicate { what: "tensor", name });
            }
            tensors.push(TensorInfo { name, dims, ty, offset, size });
        }

        let data_offset = align_up(r.pos as u64, alignment).ok_or(GgufError::Truncated {
            offset: r.pos as u64,
            what: "data section",
            need: alignment,
            have: 0,
        })?;
        let data = bytes.get(data_offset as usize..).unwrap_or(&[]);
        for t in &tensors {
            let end = t.offset.checked_add(t.size).unwrap_or(u64::MAX);
            if end > data.len() as u64 {
                return Err(GgufError::Truncated {
                    offset: data_offset.saturating_add(t.offset),
                    what: "tensor data",
                    need: t.size,
                    have: (data.len() as u64).saturating_sub(t.offset),
                });
            }
        }
        Ok(Gguf { version, metadata, tensors, alignment, data_offset, data })
    }

    pub fn get(&self, key: &str) -> Option<&Value> {
        self.metadata.get(key)
    }

    pub fn get_str(&self, key: &str) -> Option<&str> {
        self.get(key).and_then(Value::as_str)
    }

    pub fn get_u64(&self, key: &str) -> Option<u64> {
        self.get(key).and_then(Value::as_u64)
    }

    pub fn get_f64(&self, key: &str) -> Option<f64> {
        self.get(key).and_then(Value::as_f64)
    }

    pub fn get_bool(&self, key: &str) -> Option<bool> {
        self.get(key).and_then(Value::as_bool)
    }

    /// `general.architecture`, which prefixes the model's hyperparameter keys.
    pub fn architecture(&self) -> Option<&str> {
        self.get_str("general.architecture")
    }

    pub fn tensor(&self, name: &str) -> Option<&TensorInfo> {
        self.tensors.iter().find(|t| t.name == name)
    }

    /// The bytes of a tensor (bounds were checked when parsing).
    pub fn tensor_data(&self, t: &TensorInfo) -> &'a [u8] {
        &self.data[t.offset as usize..(t.offset + t.size) as usize]
    }

    /// Total bytes of tensor data, for progress reporting.
    pub fn total_tensor_bytes(&self) -> u64 {
        self.tensors.iter().map(|t| t.size).sum()
    }
}

fn bad_tensor(name: &str, reason: String) -> GgufError {
    GgufError::BadTensor { name: name.to_string(), reason }
}

fn check_limit(what: &'static str, value: u64, limit: u64) -> Result<(), GgufError> {
    if value > limit {
        Err(GgufError::TooLarge { what, value, limit })
    } else {
        Ok(())
    }
}

fn align_up(x: u64, a: u64) -> Option<u64> {
    x.checked_add(a - 1).map(|v| v / a * a)
}

/// A cursor over the input that refuses to read past its end.
struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn remaining(&self) -> u64 {
        (self.buf.len() - self.pos) as u64
    }

    fn ensure(&self, need: u64, what: &'static str) -> Result<(), GgufError> {
        if need > self.remaining() {
            Err(GgufError::Truncated { offset: self.pos as u64, what, need, have: self.remaining() })
        } else {
            Ok(())
        }
    }

    fn take(&mut self, n: u64, what: &'static str) -> Result<&'a [u8], GgufError> {
        self.ensure(n, what)?;
        let s = &self.buf[self.pos..self.pos + n as usize];
        self.pos += n as usize;
        Ok(s)
    }

    fn array<const N: usize>(&mut self, what: &'static str) -> Result<[u8; N], GgufError> {
        Ok(self.take(N as u64, what)?.try_into().expect("exact length"))
    }

    fn u32(&mut self, what: &'static str) -> Result<u32, GgufError> {
        Ok(u32::from_le_bytes(self.array(what)?))
    }

    fn u64(&mut self, what: &'static str) -> Result<u64, GgufError> {
        Ok(u64::from_le_bytes(self.array(what)?))
    }

    fn string(&mut self, limits: &Limits, what: &'static str) -> Result<String, GgufError> {
        let len = self.u64(what)?;
        check_limit("string length", len, limits.max_string_bytes)?;
        let offset = self.pos as u64;
        let bytes = self.take(len, what)?;
        String::from_utf8(bytes.to_vec()).map_err(|_| GgufError::InvalidUtf8 { offset })
    }

    fn value(&mut self, ty: u32, limits: &Limits, key: &str) -> Result<Value, GgufError> {
        const W: &str = "metadata value";
        Ok(match ty {
            0 => Value::U8(self.array::<1>(W)?[0]),
            1 => Value::I8(self.array::<1>(W)?[0] as i8),
            2 => Value::U16(u16::from_le_bytes(self.array(W)?)),
            3 => Value::I16(i16::from_le_bytes(self.array(W)?)),
            4 => Value::U32(u32::from_le_bytes(self.array(W)?)),
            5 => Value::I32(i32::from_le_bytes(self.array(W)?)),
            6 => Value::F32(f32::from_le_bytes(self.array(W)?)),
            7 => Value::Bool(self.array::<1>(W)?[0] != 0),
            8 => Value::String(self.string(limits, "metadata string")?),
            9 => Value::Array(self.array_value(limits, key)?),
            10 => Value::U64(u64::from_le_bytes(self.array(W)?)),
            11 => Value::I64(i64::from_le_bytes(self.array(W)?)),
            12 => Value::F64(f64::from_le_bytes(self.array(W)?)),
            _ => return Err(GgufError::UnknownValueType { ty, offset: self.pos as u64 - 4 }),
        })
    }

    fn array_value(&mut self, limits: &Limits, key: &str) -> Result<Array, GgufError> {
        let elem_ty = self.u32("array element type")?;
        let len = self.u64("array length")?;
        check_limit("array length", len, limits.max_array_len)?;
        // The smallest encoding of each element bounds the allocation by the input size.
        let min_size = match elem_ty {
            0 | 1 | 7 => 1,
            2 | 3 => 2,
            4..=6 => 4,
            8 | 10..=12 => 8,
            9 => return Err(GgufError::NestedArray { key: key.to_string() }),
            ty => return Err(GgufError::UnknownValueType { ty, offset: self.pos as u64 - 12 }),
        };
        self.ensure(len.saturating_mul(min_size), "array elements")?;
        let n = len as usize;
        macro_rules! fixed {
            ($variant:ident, $t:ty) => {{
                let raw = self.take(len * min_size, "array elements")?;
                Array::$variant(
                    raw.chunks_exact(std::mem::size_of::<$t>())
                        .map(|c| <$t>::from_le_bytes(c.try_into().expect("chunk")))
                        .collect(),
                )
            }};
        }
        Ok(match elem_ty {
            0 => Array::U8(self.take(len, "array elements")?.to_vec()),
            1 => Array::I8(self.take(len, "array elements")?.iter().map(|&b| b as i8).collect()),
            2 => fixed!(U16, u16),
            3 => fixed!(I16, i16),
            4 => fixed!(U32, u32),
            5 => fixed!(I32, i32),
            6 => fixed!(F32, f32),
            7 => Array::Bool(self.take(len, "array elements")?.iter().map(|&b| b != 0).collect()),
            8 => {
                let mut v = Vec::with_capacity(n);
                for _ in 0..n {
                    v.push(self.string(limits, "array string")?);
                }
                Array::String(v)
            }
            10 => fixed!(U64, u64),
            11 => fixed!(I64, i64),
            12 => fixed!(F64, f64),
            _ => unreachable!("element type checked above"),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Builds GGUF bytes for tests.
    pub(crate) struct Builder {
        kv: Vec<u8>,
        n_kv: u64,
        infos: Vec<u8>,
        n_tensors: u64,
        data: Vec<u8>,
    }

    impl Builder {
        pub fn new() -> Self {
            Self { kv: vec![], n_kv: 0, infos: vec![], n_tensors: 0, data: vec![] }
        }
        fn str_bytes(out: &mut Vec<u8>, s: &str) {
            out.extend((s.len() as u64).to_le_bytes());
            out.extend(s.as_bytes());
        }
        pub fn kv_u32(mut self, k: &str, v: u32) -> Self {
            Self::str_bytes(&mut self.kv, k);
            self.kv.extend(4u32.to_le_bytes());
            self.kv.extend(v.to_le_bytes());
            self.n_kv += 1;
            self
        }
        pub fn kv_str(mut self, k: &str, v: &str) -> Self {
            Self::str_bytes(&mut self.kv, k);
            self.kv.extend(8u32.to_le_bytes());
            Self::str_bytes(&mut self.kv, v);
            self.n_kv += 1;
            self
        }
        pub fn kv_strs(mut self, k: &str, v: &[&str]) -> Self {
            Self::str_bytes(&mut self.kv, k);
            self.kv.extend(9u32.to_le_bytes());
            self.kv.extend(8u32.to_le_bytes());
            self.kv.extend((v.len() as u64).to_le_bytes());
            for s in v {
                Self::str_bytes(&mut self.kv, s);
            }
            self.n_kv += 1;
            self
        }
        pub fn tensor_f32(mut self, name: &str, dims: &[u64], values: &[f32]) -> Self {
            Self::str_bytes(&mut self.infos, name);
            self.infos.extend((dims.len() as u32).to_le_bytes());
            for d in dims {
                self.infos.extend(d.to_le_bytes());
            }
            self.infos.extend(0u32.to_le_bytes());
            self.infos.extend((self.data.len() as u64).to_le_bytes());
            for v in values {
                self.data.extend(v.to_le_bytes());
            }
            while self.data.len() % 32 != 0 {
                self.data.push(0);
            }
            self.n_tensors += 1;
            self
        }
        pub fn build(self) -> Vec<u8> {
            let mut out = b"GGUF".to_vec();
            out.extend(3u32.to_le_bytes());
            out.extend(self.n_tensors.to_le_bytes());
            out.extend(self.n_kv.to_le_bytes());
            out.extend(self.kv);
            out.extend(self.infos);
            while out.len() % 32 != 0 {
                out.push(0);
            }
            out.extend(self.data);
            out
        }
    }

    fn sample() -> Vec<u8> {
        Builder::new()
            .kv_str("general.architecture", "bitnet")
            .kv_u32("bitnet.block_count", 2)
            .kv_strs("tokenizer.ggml.tokens", &["a", "b", "ab"])
            .tensor_f32("w", &[4, 2], &[1., 2., 3., 4., 5., 6., 7., 8.])
            .tensor_f32("n", &[3], &[9., 10., 11.])
            .build()
    }

    #[test]
    fn parses_metadata_and_tensors() {
        let bytes = sample();
        let g = Gguf::parse(&bytes).unwrap();
        assert_eq!(g.architecture(), Some("bitnet"));
        assert_eq!(g.get_u64("bitnet.block_count"), Some(2));
        let toks = g.get("tokenizer.ggml.tokens").unwrap().as_array().unwrap();
        assert_eq!(toks.len(), 3);
        let w = g.tensor("w").unwrap();
        assert_eq!(w.dims, vec![4, 2]);
        let data = g.tensor_data(w);
        assert_eq!(f32::from_le_bytes(data[28..32].try_into().unwrap()), 8.0);
        let n = g.tensor("n").unwrap();
        assert_eq!(n.offset, 32);
    }

    #[test]
    fn every_truncation_is_an_error() {
        let bytes = sample();
        for len in 0..bytes.len() - 1 {
            // The last tensor ends 20 bytes before the padded end; cuts inside padding are fine.
            if len >= bytes.len() - 20 {
                continue;
            }
            assert!(Gguf::parse(&bytes[..len]).is_err(), "prefix of {len} bytes parsed");
        }
    }

    #[test]
    fn rejects_hostile_counts() {
        let mut bytes = b"GGUF".to_vec();
        bytes.extend(3u32.to_le_bytes());
        bytes.extend(u64::MAX.to_le_bytes());
        bytes.extend(0u64.to_le_bytes());
        assert!(matches!(Gguf::parse(&bytes), Err(GgufError::TooLarge { .. })));

        // An array claiming 2^24 strings in a tiny file must fail without allocating them.
        let mut kv = Builder::new().build()[..24].to_vec();
        kv[16..24].copy_from_slice(&1u64.to_le_bytes());
        kv.extend(1u64.to_le_bytes());
        kv.push(b'k');
        kv.extend(9u32.to_le_bytes());
        kv.extend(8u32.to_le_bytes());
        kv.extend((1u64 << 24).to_le_bytes());
        assert!(matches!(Gguf::parse(&kv), Err(GgufError::Truncated { .. })));
    }

    #[test]
    fn rejects_bad_magic_and_version() {
        assert!(matches!(Gguf::parse(b"GGML\x03\0\0\0"), Err(GgufError::BadMagic(_))));
        assert!(matches!(Gguf::parse(b"GGUF\x09\0\0\0"), Err(GgufError::UnsupportedVersion(9))));
    }

    #[test]
    fn tensor_sizes_follow_ggml() {
        assert_eq!(GgmlType::TQ2_0.byte_size(512), Some(132));
        assert_eq!(GgmlType::TQ1_0.byte_size(256), Some(54));
        assert_eq!(GgmlType::I2_S.byte_size(256), Some(64 + 32));
        assert_eq!(GgmlType::Q8_0.byte_size(33), None);
    }

    proptest::proptest! {
        #[test]
        fn never_panics_on_mutations(pos in 0usize..400, byte in 0u8..=255, cut in 0usize..400) {
            let mut bytes = sample();
            let p = pos % bytes.len();
            bytes[p] = byte;
            bytes.truncate(cut.max(1).min(bytes.len()));
            let _ = Gguf::parse(&bytes);
        }

        #[test]
        fn never_panics_on_noise(bytes in proptest::collection::vec(0u8..=255, 0..512)) {
            let mut with_magic = b"GGUF\x03\0\0\0".to_vec();
            with_magic.extend(&bytes);
            let _ = Gguf::parse(&with_magic);
            let _ = Gguf::parse(&bytes);
        }
    }
}
