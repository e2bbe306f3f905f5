//! Labelled data files: one JSON object per line (`data/*.jsonl`), read by the models that
//! train at start-up and by the evaluations.

use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;

#[derive(Debug, thiserror::Error)]
pub enum DataError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}:{line}: {source}")]
    Parse {
        path: PathBuf,
        line: usize,
        source: serde_json::Error,
    },
    #[error("{0} holds no examples")]
    Empty(PathBuf),
}

/// One JSON object per non-blank line.
pub fn read_jsonl<T: DeserializeOwned>(path: &Path) -> Result<Vec<T>, DataError> {
    let text = std::fs::read_to_string(path).map_err(|source| DataError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let rows = text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| {
            serde_json::from_str(l).map_err(|source| DataError::Parse {
                path: path.to_path_buf(),
                line: i + 1,
                source,
            })
        })
        .collect::<Result<Vec<T>, _>>()?;
    if rows.is_empty() {
        return Err(DataError::Empty(path.to_path_buf()));
    }
    Ok(rows)
}
