//! STUB (replaced by the real module from the wt-pure branch).
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt};

pub enum Peeked {
    ServerName(String),
    NoServerName,
    NotTls,
}

#[derive(Debug, thiserror::Error)]
pub enum SniError {
    #[error("timeout")]
    Timeout,
    #[error("closed")]
    Closed,
    #[error("too large")]
    TooLarge,
    #[error("io: {0}")]
    Io(std::io::Error),
}

pub async fn peek_server_name<S: AsyncRead + Unpin>(
    stream: &mut S,
    buffered: &mut Vec<u8>,
    timeout: Duration,
) -> Result<Peeked, SniError> {
    let mut b = [0u8; 1];
    match tokio::time::timeout(timeout, stream.read(&mut b)).await {
        Err(_) => Err(SniError::Timeout),
        Ok(Err(e)) => Err(SniError::Io(e)),
        Ok(Ok(0)) => Err(SniError::Closed),
        Ok(Ok(_)) => {
            buffered.push(b[0]);
            Ok(Peeked::NotTls)
        }
    }
}
