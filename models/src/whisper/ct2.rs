//! CTranslate2 `model.bin` (format version 6) reader, and the mapping of a
//! `WhisperSpec` onto the tensor names of candle-transformers' Whisper model.
//!
//! We map to candle's (= Hugging Face's) names rather than inventing our own so
//! that one map serves both our decoder and `candle_transformers::models::whisper::model::Whisper`,
//! which the tests use as an oracle.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use candle_transformers::models::whisper::Config;

/// Everything that can be wrong with a `model.bin`, with enough context to fix it.
#[derive(Debug, thiserror::Error)]
pub enum Ct2Error {
    #[error("cannot read {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("unsupported CTranslate2 model.bin format version {0} (only version 6 is supported; re-convert with a recent ct2-transformers-converter)")]
    BadVersion(u32),
    #[error("model.bin is truncated: {what} needs {needed} bytes at offset {offset}, but the file has only {len} bytes")]
    Truncated {
        what: String,
        offset: usize,
        needed: usize,
        len: usize,
    },
    #[error("malformed string at offset {offset}: {why}")]
    BadString { offset: usize, why: &'static str },
    #[error(
        "variable {name:?} has unknown dtype id {id} (known: 0=f32 1=i8 2=i16 3=i32 4=f16 5=bf16)"
    )]
    UnknownDtype { name: String, id: u8 },
    #[error(
        "variable {name:?} holds {nbytes} bytes, but shape {dims:?} of {dtype:?} needs {expected}"
    )]
    SizeMismatch {
        name: String,
        nbytes: usize,
        dims: Vec<usize>,
        dtype: Ct2Dtype,
        expected: usize,
    },
    #[error("model spec is {0:?}, expected \"WhisperSpec\"")]
    WrongSpec(String),
    #[error("variable {0:?} not found in model.bin")]
    MissingVariable(String),
    #[error("variable {name:?} has shape {found:?}, expected {expected}")]
    BadShape {
        name: String,
        found: Vec<usize>,
        expected: String,
    },
    #[error(
        "variable {name:?} is {dtype:?}; only float weights are supported (int8 models are not)"
    )]
    NotFloat { name: String, dtype: Ct2Dtype },
    #[error("trailing {0} bytes after the alias table")]
    TrailingBytes(usize),
    #[error("tensor conversion failed: {0}")]
    Candle(#[from] candle_core::Error),
}

type Result<T> = std::result::Result<T, Ct2Error>;

/// Element types of CTranslate2 variables, by their on-disk id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ct2Dtype {
    F32,
    I8,
    I16,
    I32,
    F16,
    Bf16,
}

impl Ct2Dtype {
    fn from_id(id: u8, name: &str) -> Result<Self> {
        Ok(match id {
            0 => Self::F32,
            1 => Self::I8,
            2 => Self::I16,
            3 => Self::I32,
            4 => Self::F16,
            5 => Self::Bf16,
            _ => {
                return Err(Ct2Error::UnknownDtype {
                    name: name.to_string(),
                    id,
                })
            }
        })
    }

    pub fn size(self) -> usize {
        match self {
            Self::I8 => 1,
            Self::I16 | Self::F16 | Self::Bf16 => 2,
            Self::F32 | Self::I32 => 4,
        }
    }
}

/// One variable: shape, type and where its bytes sit in the file buffer.
#[derive(Debug, Clone)]
pub struct Ct2Var {
    pub dims: Vec<usize>,
    pub dtype: Ct2Dtype,
    range: std::ops::Range<usize>,
}

/// A parsed `model.bin`: the raw file plus an index of its variables.
pub struct Ct2Model {
    pub spec: String,
    pub revision: u32,
    bytes: Vec<u8>,
    vars: HashMap<String, Ct2Var>,
    aliases: HashMap<String, String>,
}

/// Little-endian cursor that reports truncation instead of panicking.
struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8]> {
        if self.buf.len() - self.pos < n {
            return Err(Ct2Error::Truncated {
                what: what.to_string(),
                offset: self.pos,
                needed: n,
                len: self.buf.len(),
            });
        }
        let s = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }

    fn u8(&mut self, what: &str) -> Result<u8> {
        Ok(self.take(1, what)?[0])
    }

    fn u16(&mut self, what: &str) -> Result<u16> {
        Ok(u16::from_le_bytes(self.take(2, what)?.try_into().unwrap()))
    }

    fn u32(&mut self, what: &str) -> Result<u32> {
        Ok(u32::from_le_bytes(self.take(4, what)?.try_into().unwrap()))
    }

    /// u16 length (counting a trailing NUL), then the bytes and the NUL.
    fn string(&mut self, what: &str) -> Result<String> {
        let offset = self.pos;
        let n = self.u16(what)? as usize;
        let raw = self.take(n, what)?;
        let Some((&0, text)) = raw.split_last() else {
            return Err(Ct2Error::BadString {
                offset,
                why: "missing trailing NUL",
            });
        };
        String::from_utf8(text.to_vec()).map_err(|_| Ct2Error::BadString {
            offset,
            why: "not UTF-8",
        })
    }
}

impl Ct2Model {
    pub fn read(path: &Path) -> Result<Self> {
        let bytes = std::fs::read(path).map_err(|source| Ct2Error::Io {
            path: path.to_path_buf(),
            source,
        })?;
        Self::parse(bytes)
    }

    pub fn parse(bytes: Vec<u8>) -> Result<Self> {
        let mut r = Reader {
            buf: &bytes,
            pos: 0,
        };
        let version = r.u32("format version")?;
        if version != 6 {
            return Err(Ct2Error::BadVersion(version));
        }
        let spec = r.string("spec name")?;
        let revision = r.u32("spec revision")?;
        let n_vars = r.u32("variable count")?;
        let mut vars = HashMap::with_capacity(n_vars as usize);
        for i in 0..n_vars {
            let (name, var) = read_var(&mut r, i)?;
            vars.insert(name, var);
        }
        let n_aliases = r.u32("alias count")?;
        let mut aliases = HashMap::with_capacity(n_aliases as usize);
        for _ in 0..n_aliases {
            let alias = r.string("alias name")?;
            let target = r.string("alias target")?;
            aliases.insert(alias, target);
        }
        if r.pos != bytes.len() {
            return Err(Ct2Error::TrailingBytes(bytes.len() - r.pos));
        }
        Ok(Self {
            spec,
            revision,
            bytes,
            vars,
            aliases,
        })
    }

    /// Looks a variable up, following aliases (e.g. the tied output projection).
    pub fn var(&self, name: &str) -> Result<&Ct2Var> {
        let target = self.aliases.get(name).map_or(name, String::as_str);
        self.vars
            .get(target)
            .ok_or_else(|| Ct2Error::MissingVariable(name.to_string()))
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.vars.keys().map(String::as_str)
    }

    pub fn raw(&self, var: &Ct2Var) -> &[u8] {
        &self.bytes[var.range.clone()]
    }

    /// An integer scalar such as `decoder/num_heads`.
    pub fn scalar_usize(&self, name: &str) -> Result<usize> {
        let var = self.var(name)?;
        let raw = self.raw(var);
        let v = match var.dtype {
            Ct2Dtype::I8 => raw[0] as i8 as i64,
            Ct2Dtype::I16 => i16::from_le_bytes([raw[0], raw[1]]) as i64,
            Ct2Dtype::I32 => i32::from_le_bytes(raw[..4].try_into().unwrap()) as i64,
            Ct2Dtype::F32 => f32::from_le_bytes(raw[..4].try_into().unwrap()) as i64,
            dtype => {
                return Err(Ct2Error::NotFloat {
                    name: name.to_string(),
                    dtype,
                })
            }
        };
        usize::try_from(v).map_err(|_| Ct2Error::BadShape {
            name: name.to_string(),
            found: vec![],
            expected: "a non-negative integer scalar".to_string(),
        })
    }

    /// A float variable as an f32 tensor on the CPU (f16 widened: candle's CPU f16 matmul is slow).
    pub fn tensor(&self, name: &str) -> Result<Tensor> {
        let var = self.var(name)?;
        let dtype = match var.dtype {
            Ct2Dtype::F32 => DType::F32,
            Ct2Dtype::F16 => DType::F16,
            Ct2Dtype::Bf16 => DType::BF16,
            dtype => {
                return Err(Ct2Error::NotFloat {
                    name: name.to_string(),
                    dtype,
                })
            }
        };
        let t = Tensor::from_raw_buffer(self.raw(var), dtype, &var.dims, &Device::Cpu)?;
        Ok(t.to_dtype(DType::F32)?)
    }

    fn tensor_2d(&self, name: &str, rows: usize, cols: usize) -> Result<Tensor> {
        let t = self.tensor(name)?;
        check_shape(name, &t, &[rows, cols])?;
        Ok(t)
    }

    fn count_layers(&self, prefix: &str) -> usize {
        (0..)
            .take_while(|i| {
                let name = format!("{prefix}/layer_{i}/ffn/linear_0/weight");
                self.vars.contains_key(&name)
            })
            .count()
    }

    /// Model hyper-parameters, read off the shapes and scalars of the file.
    pub fn whisper_config(&self) -> Result<Config> {
        if self.spec != "WhisperSpec" {
            return Err(Ct2Error::WrongSpec(self.spec.clone()));
        }
        let conv1 = self.var("encoder/conv1/weight")?;
        let [d_model, n_mels, 3] = conv1.dims[..] else {
            return Err(Ct2Error::BadShape {
                name: "encoder/conv1/weight".into(),
                found: conv1.dims.clone(),
                expected: "(d_model, n_mels, 3)".into(),
            });
        };
        let dim0 = |name: &str| self.var(name).map(|v| v.dims.first().copied().unwrap_or(0));
        Ok(Config {
            num_mel_bins: n_mels,
            max_source_positions: dim0("encoder/position_encodings/encodings")?,
            d_model,
            encoder_attention_heads: self.scalar_usize("encoder/num_heads")?,
            encoder_layers: self.count_layers("encoder"),
            vocab_size: dim0("decoder/embeddings/weight")?,
            max_target_positions: dim0("decoder/position_encodings/encodings")?,
            decoder_attention_heads: self.scalar_usize("decoder/num_heads")?,
            decoder_layers: self.count_layers("decoder"),
            suppress_tokens: vec![],
        })
    }

    /// All weights under candle-transformers' Whisper names (`model.encoder.layers.0.self_attn.q_proj.weight`, ...).
    ///
    /// CTranslate2 fuses projections: self-attention `linear_0` is q|k|v stacked by rows,
    /// cross-attention `linear_1` is k|v. Whisper's key projection has no bias (CT2 stores
    /// zeros there), so the k part of fused biases is dropped.
    pub fn to_candle_tensors(&self) -> Result<HashMap<String, Tensor>> {
        let cfg = self.whisper_config()?;
        let d = cfg.d_model;
        let mut out = HashMap::new();
        for side in ["encoder", "decoder"] {
            let dst = format!("model.{side}");
            for name in ["conv1", "conv2"].iter().filter(|_| side == "encoder") {
                out.insert(
                    format!("{dst}.{name}.weight"),
                    self.tensor(&format!("{side}/{name}/weight"))?,
                );
                out.insert(
                    format!("{dst}.{name}.bias"),
                    self.tensor(&format!("{side}/{name}/bias"))?,
                );
            }
            out.insert(
                format!("{dst}.embed_positions.weight"),
                self.tensor(&format!("{side}/position_encodings/encodings"))?,
            );
            self.map_layer_norm(
                &mut out,
                &format!("{side}/layer_norm"),
                &format!("{dst}.layer_norm"),
            )?;
            let n_layers = if side == "encoder" {
                cfg.encoder_layers
            } else {
                cfg.decoder_layers
            };
            for i in 0..n_layers {
                self.map_layer(&mut out, side, i, d)?;
            }
        }
        out.insert(
            "model.decoder.embed_tokens.weight".into(),
            self.tensor_2d("decoder/embeddings/weight", cfg.vocab_size, d)?,
        );
        Ok(out)
    }

    fn map_layer(
        &self,
        out: &mut HashMap<String, Tensor>,
        side: &str,
        i: usize,
        d: usize,
    ) -> Result<()> {
        let src = format!("{side}/layer_{i}");
        let dst = format!("model.{side}.layers.{i}");
        let sa = format!("{src}/self_attention");
        self.map_layer_norm(
            out,
            &format!("{sa}/layer_norm"),
            &format!("{dst}.self_attn_layer_norm"),
        )?;
        self.map_fused(
            out,
            &format!("{sa}/linear_0"),
            &format!("{dst}.self_attn"),
            &["q_proj", "k_proj", "v_proj"],
            d,
        )?;
        self.map_linear(
            out,
            &format!("{sa}/linear_1"),
            &format!("{dst}.self_attn.out_proj"),
        )?;
        if side == "decoder" {
            let ca = format!("{src}/attention");
            let ca_dst = format!("{dst}.encoder_attn");
            self.map_layer_norm(
                out,
                &format!("{ca}/layer_norm"),
                &format!("{dst}.encoder_attn_layer_norm"),
            )?;
            self.map_linear(out, &format!("{ca}/linear_0"), &format!("{ca_dst}.q_proj"))?;
            self.map_fused(
                out,
                &format!("{ca}/linear_1"),
                &ca_dst,
                &["k_proj", "v_proj"],
                d,
            )?;
            self.map_linear(
                out,
                &format!("{ca}/linear_2"),
                &format!("{ca_dst}.out_proj"),
            )?;
        }
        self.map_layer_norm(
            out,
            &format!("{src}/ffn/layer_norm"),
            &format!("{dst}.final_layer_norm"),
        )?;
        self.map_linear(out, &format!("{src}/ffn/linear_0"), &format!("{dst}.fc1"))?;
        self.map_linear(out, &format!("{src}/ffn/linear_1"), &format!("{dst}.fc2"))?;
        Ok(())
    }

    fn map_layer_norm(
        &self,
        out: &mut HashMap<String, Tensor>,
        src: &str,
        dst: &str,
    ) -> Result<()> {
        out.insert(
            format!("{dst}.weight"),
            self.tensor(&format!("{src}/gamma"))?,
        );
        out.insert(format!("{dst}.bias"), self.tensor(&format!("{src}/beta"))?);
        Ok(())
    }

    fn map_linear(&self, out: &mut HashMap<String, Tensor>, src: &str, dst: &str) -> Result<()> {
        out.insert(
            format!("{dst}.weight"),
            self.tensor(&format!("{src}/weight"))?,
        );
        out.insert(format!("{dst}.bias"), self.tensor(&format!("{src}/bias"))?);
        Ok(())
    }

    /// Splits a row-stacked fused projection into `parts`, each `d` rows.
    fn map_fused(
        &self,
        out: &mut HashMap<String, Tensor>,
        src: &str,
        dst: &str,
        parts: &[&str],
        d: usize,
    ) -> Result<()> {
        let w_name = format!("{src}/weight");
        let w = self.tensor_2d(&w_name, parts.len() * d, d)?;
        let b_name = format!("{src}/bias");
        let b = self.tensor(&b_name)?;
        check_shape(&b_name, &b, &[parts.len() * d])?;
        for (j, part) in parts.iter().enumerate() {
            out.insert(
                format!("{dst}.{part}.weight"),
                w.narrow(0, j * d, d)?.contiguous()?,
            );
            if *part != "k_proj" {
                out.insert(
                    format!("{dst}.{part}.bias"),
                    b.narrow(0, j * d, d)?.contiguous()?,
                );
            }
        }
        Ok(())
    }
}

fn read_var(r: &mut Reader, index: u32) -> Result<(String, Ct2Var)> {
    let name = r.string(&format!("name of variable #{index}"))?;
    let rank = r.u8(&format!("rank of {name}"))? as usize;
    let mut dims = Vec::with_capacity(rank);
    for _ in 0..rank {
        dims.push(r.u32(&format!("shape of {name}"))? as usize);
    }
    let dtype = Ct2Dtype::from_id(r.u8(&format!("dtype of {name}"))?, &name)?;
    let nbytes = r.u32(&format!("byte count of {name}"))? as usize;
    let expected = dims.iter().product::<usize>() * dtype.size();
    if nbytes != expected {
        return Err(Ct2Error::SizeMismatch {
            name,
            nbytes,
            dims,
            dtype,
            expected,
        });
    }
    let start = r.pos;
    r.take(nbytes, &format!("data of {name}"))?;
    Ok((
        name,
        Ct2Var {
            dims,
            dtype,
            range: start..start + nbytes,
        },
    ))
}

fn check_shape(name: &str, t: &Tensor, expected: &[usize]) -> Result<()> {
    if t.dims() != expected {
        return Err(Ct2Error::BadShape {
            name: name.to_string(),
            found: t.dims().to_vec(),
            expected: format!("{expected:?}"),
        });
    }
    Ok(())
}
