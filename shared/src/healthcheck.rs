//! `<binary> healthcheck`: probes the service's own readiness endpoint, so container health
//! checks work in images that hold nothing but the binary.

use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// GETs `path` on `addr` (an unspecified address means loopback); true on a 2xx answer.
pub async fn probe(mut addr: SocketAddr, path: &str) -> bool {
    if addr.ip().is_unspecified() {
        addr.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
    }
    let attempt = async {
        let mut stream = tokio::net::TcpStream::connect(addr).await?;
        let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await?;
        let mut head = [0u8; 12];
        stream.read_exact(&mut head).await?;
        Ok::<_, std::io::Error>(head.starts_with(b"HTTP/1.1 2"))
    };
    matches!(
        tokio::time::timeout(Duration::from_secs(3), attempt).await,
        Ok(Ok(true))
    )
}

/// Exits the process: 0 when `probe` succeeds, 1 otherwise.
pub async fn run(addr: SocketAddr, path: &str) -> ! {
    std::process::exit(if probe(addr, path).await { 0 } else { 1 })
}
